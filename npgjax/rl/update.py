"""One update in four pieces: the rollout, the policy step, the critic fit, the bookkeeping.

``front`` collects a rollout and computes the advantages and value targets; ``policy``
(the algorithm's step) and ``critic`` (the critic fit) read ``front``'s results and not
each other's, so they can run at once; ``back`` records episodes and metrics and
assembles the next state. :func:`compose` joins them into ``update(state)``, with the
two halves one after the other or, through ``run_pair``, on two devices at once
(:mod:`npgjax.rl.tasks`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from npgjax.estimators import explained_variance, gae, normalize_advantages
from npgjax.rl.algos import UpdateData
from npgjax.rl.critic import fit_critic
from npgjax.rl.normalize import update_stats
from npgjax.rl.parts import Parts
from npgjax.rl.recurrent import fit_recurrent_critic, unroll_values
from npgjax.rl.rollout import collect, record_episodes
from npgjax.rl.state import RunnerState, UpdatePieces

Array = jax.Array
PyTree = Any

__all__: list[str] = []  # internal: make_trainer assembles the update from it


def make_pieces(parts: Parts, shard_batch: Callable[[dict], dict] | None = None
                ) -> UpdatePieces:
    """The four pieces of ``parts``' update (see the module docstring).

    Args:
      parts: the trainer's assembled pieces (:class:`npgjax.rl.parts.Parts`).
      shard_batch: optional function applied to the flat batch before the policy step
        and the critic fit (see :func:`npgjax.rl.make_trainer`).

    Returns:
      An :class:`npgjax.rl.state.UpdatePieces`.
    """
    config = parts.config
    B = config.batch_size

    def front(state: RunnerState) -> dict[str, Any]:
        hp = state.hparams
        key, k_roll, k_vf, k_pi = jax.random.split(state.key, 4)
        carry, traj, values, next_values, memory = _rollout(parts, state, k_roll)
        adv, targets = gae(traj["reward"], values, next_values, traj["terminated"],
                           traj["truncated"], hp["gamma"], hp["gae_lambda"])
        keys = ("obs", "actions", "old_logp") + (("carry", "done") if parts.recurrent else ())
        flat = {k: traj[k].reshape((B,) + traj[k].shape[2:]) for k in keys}
        a = adv.reshape(B)
        flat["adv"] = normalize_advantages(a) if config.normalize_adv else a
        if shard_batch is not None:
            flat = shard_batch(flat)
        return {"key": key, "k_vf": k_vf, "k_pi": k_pi, "carry": carry[:4], "memory": memory,
                "traj": traj, "flat": flat, "values": values, "next_values": next_values,
                "targets": targets,
                "progress": state.update.astype(jnp.float32) / config.num_updates}

    def policy_step(state: RunnerState, f: dict[str, Any]) -> Any:
        return parts.algo.step(state.pi_params, state.pi_opt_state,
                               UpdateData(f["flat"], f["traj"], f["next_values"]),
                               state.hparams, f["progress"], f["k_pi"])

    def critic_fit(state: RunnerState, f: dict[str, Any]) -> Any:
        return _fit_critic(parts, state, f["traj"], f["flat"], f["targets"], f["k_vf"])

    def back(state: RunnerState, f: dict[str, Any], pol: Any, crit: Any
             ) -> tuple[RunnerState, dict[str, Array]]:
        (pi_params, pi_opt_state, diag), (vf_params, vf_opt_state) = pol, crit
        traj, stats = f["traj"], state.obs_stats
        if config.normalize_obs:
            stats = update_stats(stats, traj["raw_obs"])
        buffers, mean_ret, mean_len = record_episodes(
            (state.return_buffer, state.length_buffer, state.num_episodes), traj)
        model = parts.model
        metrics = _metrics(state, traj, buffers[2], mean_ret, mean_len, f["values"],
                           f["targets"], model.dist_fn(state.pi_params, f["flat"]),
                           model.dist_fn(pi_params, f["flat"]), B)
        new_state = RunnerState(
            pi_params, vf_params, vf_opt_state, pi_opt_state, stats, *f["carry"],
            buffers[0], buffers[1], buffers[2], f["key"], state.update + 1, state.hparams,
            f["memory"])
        return new_state, {**metrics, **diag}

    return UpdatePieces(front, policy_step, critic_fit, back)


def _rollout(parts: Parts, state: RunnerState, key: Array) -> tuple[Any, ...]:
    """``(carry, traj, values, next_values, memory)``: one rollout from ``state`` and the
    critic's values of its observations (unrolled with memory for a recurrent critic)."""
    carry = (state.env_state, state.obs, state.ep_return, state.ep_length)
    stats = state.obs_stats
    if parts.recurrent:
        carry += (state.memory["pi"],)
        pol = lambda o, h: parts.policy_step(state.pi_params, o, h)
    else:
        pol = lambda o: parts.policy(state.pi_params, o)
    carry, traj = collect(parts.spec, pol, lambda o: parts.prep(stats, o), carry, key,
                          parts.config.num_steps)
    if parts.recurrent:
        values, next_values, vf_carry = unroll_values(
            parts.vf_net, state.vf_params, state.memory["vf"], traj["obs"],
            traj["next_obs"], traj["done"])
        return carry, traj, values, next_values, {"pi": carry[4], "vf": vf_carry}
    values = parts.value(state.vf_params, traj["obs"])
    next_values = parts.value(state.vf_params, traj["next_obs"])
    return carry, traj, values, next_values, state.memory


def _in_turn(first: Callable[[], Any], second: Callable[[], Any]) -> tuple[Any, Any]:
    return first(), second()


def compose(pieces: UpdatePieces, run_pair: Callable[..., tuple[Any, Any]] | None = None
            ) -> Callable[[RunnerState], tuple[RunnerState, dict[str, Array]]]:
    """``update(state) -> (state, metrics)`` from the pieces.

    Args:
      pieces: from :func:`make_pieces`.
      run_pair: ``run_pair(policy_step, critic_fit) -> (policy result, critic result)``,
        given the two halves as thunks; None runs them one after the other.

    Returns:
      The update, a pure function.
    """

    def update(state: RunnerState) -> tuple[RunnerState, dict[str, Array]]:
        f = pieces.front(state)
        pol, crit = (run_pair or _in_turn)(lambda: pieces.policy(state, f),
                                           lambda: pieces.critic(state, f))
        return pieces.back(state, f, pol, crit)

    return update


def _fit_critic(parts: Parts, state: RunnerState, traj: dict[str, Array],
                flat: dict[str, Array], targets: Array, key: Array) -> tuple[PyTree, PyTree]:
    config = parts.config
    B = config.batch_size
    if not parts.recurrent:
        return fit_critic(parts.value, parts.vf_tx, state.vf_params, state.vf_opt_state,
                          flat["obs"], targets.reshape(B), key, epochs=config.vf_epochs,
                          minibatch=config.vf_minibatch or B)
    # Whole environments per minibatch: as many steps as vf_minibatch, where that divides.
    E = config.num_envs
    mb = max(1, (config.vf_minibatch or B) // config.num_steps)
    return fit_recurrent_critic(
        parts.vf_net, parts.vf_tx, state.vf_params, state.vf_opt_state,
        (state.memory["vf"], traj["obs"], traj["done"]), targets, key,
        epochs=config.vf_epochs, minibatch_envs=mb if E % mb == 0 else E)


def _metrics(state, traj, n_ep, mean_ret, mean_len, values, targets, old_dist, new_dist, B):
    done = traj["done"]
    n_done = jnp.sum(done)
    return {
        "env_steps": (state.update + 1) * B,
        "train_return": mean_ret,
        "episode_length": mean_len,
        "episodes": n_ep,
        "rollout_return": jnp.where(
            n_done > 0, jnp.sum(traj["ep_return"] * done) / jnp.maximum(n_done, 1), jnp.nan),
        "kl": jnp.mean(old_dist.kl(new_dist)),
        "entropy": jnp.mean(old_dist.entropy()),
        "value_loss": jnp.mean((values - targets) ** 2),
        "explained_variance": explained_variance(values, targets),
    }
