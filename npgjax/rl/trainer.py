"""Jitted, vectorised training on gymnax: ``make_train(config) -> train(key)``.

``make_trainer`` only assembles the pieces: the environment (:mod:`~npgjax.rl.envs`),
the networks (:mod:`~npgjax.rl.networks`), the update (:mod:`~npgjax.rl.update`: the
rollout, GAE from the core estimators, the algorithm's policy step from
:mod:`~npgjax.rl.algos` and the critic fit) and the deterministic evaluation
(:mod:`~npgjax.rl.evaluation`). ``train`` is a pure function: jit it, vmap it over seeds,
or over traced hyperparameters (``hparams``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from npgjax.rl.algos import ALGORITHMS, PolicyModel
from npgjax.rl.configs import Config
from npgjax.rl.envs import make_env
from npgjax.rl.evaluation import evaluate_episodes
from npgjax.rl.networks import make_networks
from npgjax.rl.normalize import init_stats
from npgjax.rl.parts import Parts as _Parts
from npgjax.rl.state import RunnerState, Trainer
from npgjax.rl.update import compose, make_pieces

Array = jax.Array
PyTree = Any

__all__ = ["RunnerState", "Trainer", "make_train", "make_trainer", "run_updates"]

_EVAL_SALT = 0x5EED  # evaluation keys are folded from the state's key, off its stream


def make_trainer(
    config: Config,
    *,
    policy_torso: nn.Module | None = None,
    critic_torso: nn.Module | None = None,
    shard_batch: Callable[[dict[str, Array]], dict[str, Array]] | None = None,
    run_pair: Callable[..., tuple[Any, Any]] | None = None,
) -> Trainer:
    """Build the pure ``init``, ``update`` and ``evaluate`` functions for ``config``.

    Args:
      config: a :class:`npgjax.rl.Config` (see :func:`npgjax.rl.get_config`).
      policy_torso: any flax module mapping a batch of (normalised) observations to
        features, used instead of ``config.network`` for the policy (a linear head is
        added).
      critic_torso: likewise for the critic.
      shard_batch: optional function applied to the flat batch of each update (a dict
        of ``[num_steps * num_envs, ...]`` arrays) before the policy step and the critic
        fit: a sharding constraint that keeps the batch split over devices (see
        :func:`npgjax.rl.sharding.make_sharded_trainer`); None leaves it as it is.
      run_pair: optional ``run_pair(policy_step, critic_fit) -> (policy result, critic
        result)``, given the two halves of each update as thunks; None runs them one
        after the other (:func:`npgjax.rl.tasks.task_pair` runs them on two devices).

    Returns:
      A :class:`Trainer`.

    Examples:
      >>> import jax
      >>> from npgjax.rl import get_config, make_trainer
      >>> trainer = make_trainer(get_config("CartPole-v1", num_envs=2, num_steps=8))
      >>> state = trainer.init(jax.random.PRNGKey(0))
      >>> state, metrics = jax.jit(trainer.update)(state)
      >>> int(metrics["env_steps"])
      16
    """
    config = config.validate()
    env_params = config.env_params
    spec = make_env(config.env, config.env_kwargs,
                    dict(env_params) if isinstance(env_params, tuple) else env_params,
                    config.obs_keep)
    pi_net, vf_net = make_networks(config.network, spec.obs_shape, spec.action_dim,
                                   hidden=config.hidden, activation=config.activation,
                                   policy_torso=policy_torso, critic_torso=critic_torso)
    parts = _Parts(config, spec, pi_net, vf_net, None,
                   optax.inject_hyperparams(optax.adam)(learning_rate=config.vf_lr))
    model = PolicyModel(parts.policy, config.num_steps, config.num_envs,
                        parts.policy_batch if parts.recurrent else None)
    parts = parts._replace(algo=ALGORITHMS[config.algo].build(model, config.options),
                           model=model)
    update = compose(make_pieces(parts, shard_batch), run_pair)
    return Trainer(_make_init(parts), update, _make_evaluate(parts), parts.act, config, spec,
                   parts.init_carry, model)


def _make_init(parts: _Parts) -> Callable[..., RunnerState]:
    config, spec = parts.config, parts.spec
    E = config.num_envs

    def init(key: Array, hparams: dict[str, Any] | None = None) -> RunnerState:
        hp = {k: jnp.asarray(v, jnp.float32) for k, v in config.hparams().items()}
        for k, v in (hparams or {}).items():
            if k not in hp:
                raise ValueError(f"unknown hparam {k!r}; traced hparams of this config: "
                                 f"{tuple(hp)}.")
            hp[k] = jnp.asarray(v, jnp.float32)
        key, k_pi, k_vf, k_env = jax.random.split(key, 4)
        dummy = jnp.zeros((1, *spec.obs_shape))
        args = (parts.init_carry(1), dummy) if parts.recurrent else (dummy,)
        pi_params: dict[str, Any] = {"net": parts.pi_net.init(k_pi, *args)}
        if not spec.discrete:
            pi_params["log_std"] = jnp.full((spec.action_dim,), config.init_log_std,
                                            jnp.float32)
        vf_params = parts.vf_net.init(k_vf, *args)
        vf_opt_state = parts.vf_tx.init(vf_params)
        vf_opt_state.hyperparams["learning_rate"] = hp["vf_lr"]
        obs, env_state = jax.vmap(spec.env.reset, in_axes=(0, None))(
            jax.random.split(k_env, E), spec.params)
        W = config.return_window
        return RunnerState(
            pi_params=pi_params, vf_params=vf_params, vf_opt_state=vf_opt_state,
            pi_opt_state=parts.algo.init(pi_params, hp), obs_stats=init_stats(spec.obs_shape),
            env_state=env_state, obs=obs, ep_return=jnp.zeros(E),
            ep_length=jnp.zeros(E, jnp.int32), return_buffer=jnp.zeros(W),
            length_buffer=jnp.zeros(W), num_episodes=jnp.zeros((), jnp.int32), key=key,
            update=jnp.zeros((), jnp.int32), hparams=hp,
            memory={"pi": parts.init_carry(E), "vf": parts.init_carry(E)}
            if parts.recurrent else ())

    return init


def _make_evaluate(parts: _Parts) -> Callable[[RunnerState], dict[str, Array]]:
    n = parts.config.eval_episodes

    def evaluate(state: RunnerState) -> dict[str, Array]:
        key = jax.random.fold_in(state.key, _EVAL_SALT)
        # Policy-space actions: evaluate_episodes maps them to the env's range itself.
        if parts.recurrent:
            ret, length = evaluate_episodes(
                parts.spec, lambda o, k, h: parts.raw_act(state.pi_params, state.obs_stats,
                                                          o, carry=h),
                key, n, carry=parts.init_carry(n))
        else:
            ret, length = evaluate_episodes(
                parts.spec, lambda o, k: parts.raw_act(state.pi_params, state.obs_stats, o)[0],
                key, n)
        return {"eval_return": jnp.mean(ret), "eval_length": jnp.mean(length)}

    return evaluate


def run_updates(
    trainer: Trainer, state: RunnerState, start: int | Array, length: int
) -> tuple[RunnerState, dict[str, Array]]:
    """``length`` updates from update index ``start``, evaluating where the config says.

    The evaluation runs after updates ``u`` (counted from 1) with ``u % eval_every == 0``
    and after the last update of training; ``eval_return`` and ``eval_length`` are NaN
    at the other updates. ``start`` must not be batched (vmap seeds with
    ``in_axes=(0, None)``), so the evaluation stays a real branch, run only when due.

    Args:
      trainer: from :func:`make_trainer`.
      state: the state after ``start`` updates.
      start: index of the first update (a Python int or an unbatched scalar).
      length: number of updates (static).

    Returns:
      ``(state, metrics)`` with metrics stacked over the updates.
    """
    cfg = trainer.config
    if not cfg.eval_every:
        return jax.lax.scan(lambda s, _: trainer.update(s), state, None, length=length)
    nan = {"eval_return": jnp.float32(jnp.nan), "eval_length": jnp.float32(jnp.nan)}

    def body(s, i):
        s, m = trainer.update(s)
        due = ((i + 1) % cfg.eval_every == 0) | (i + 1 == cfg.num_updates)
        ev = jax.lax.cond(due, trainer.evaluate, lambda _: nan, s)
        return s, {**m, **ev}

    return jax.lax.scan(body, state, start + jnp.arange(length, dtype=jnp.int32))


def make_train(
    config: Config,
    *,
    policy_torso: nn.Module | None = None,
    critic_torso: nn.Module | None = None,
) -> Callable[..., tuple[RunnerState, dict[str, Array]]]:
    """``train(key, hparams=None) -> (final_state, metrics)``: the whole run, one function.

    ``metrics`` holds one entry per update (arrays of length ``config.num_updates``):
    ``train_return`` (mean of the last ``return_window`` training episodes, NaN until
    one ends), ``eval_return`` (the deterministic policy, NaN between evaluations), the
    KL, entropy, critic and solver diagnostics. Jit it; vmap it over keys for seeds, and
    over ``hparams`` (a dict of ``config.traced`` entries, e.g. ``{"max_kl":
    jnp.array([...])}``) for sweeps.

    Args:
      config: a :class:`npgjax.rl.Config`.
      policy_torso: optional flax module for the policy (see :func:`make_trainer`).
      critic_torso: optional flax module for the critic.

    Returns:
      The pure training function.

    Examples:
      >>> import jax
      >>> from npgjax.rl import get_config, make_train
      >>> cfg = get_config("CartPole-v1", total_timesteps=64, num_envs=2, num_steps=16)
      >>> _, metrics = jax.jit(make_train(cfg))(jax.random.PRNGKey(0))
      >>> metrics["train_return"].shape
      (2,)
    """
    trainer = make_trainer(config, policy_torso=policy_torso, critic_torso=critic_torso)

    def train(key: Array, hparams: dict[str, Any] | None = None):
        state = trainer.init(key, hparams)
        return run_updates(trainer, state, 0, trainer.config.num_updates)

    return train
