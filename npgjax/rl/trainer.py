"""Jitted, vectorised training on gymnax: ``make_train(config) -> train(key)``.

One update = a ``lax.scan`` rollout of ``num_steps`` over ``num_envs`` vmapped
environments, GAE from the core estimators, a critic fit with optax, and a policy step
through the core's optax transforms. ``train`` is a pure function: jit it, vmap it over
seeds, or over hyperparameters (``hparams``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from npgjax.distributions import Categorical, DiagGaussian
from npgjax.estimators import explained_variance, gae, normalize_advantages, surrogate_loss
from npgjax.logprob import segment_log_probs
from npgjax.rl._gymnax import import_gymnax
from npgjax.rl.configs import Config
from npgjax.rl.enac import enac_objective, segment_returns
from npgjax.rl.networks import MLP
from npgjax.rl.normalize import RunningStats, init_stats, normalize, update_stats
from npgjax.transforms import mean_kl, precondition_by_fisher, trust_region_line_search

Array = jax.Array
PyTree = Any

__all__ = ["HPARAMS", "RunnerState", "Trainer", "make_train", "make_trainer"]

#: Config fields that may be traced: pass them in ``hparams`` to vmap over them.
HPARAMS = ("max_kl", "damping", "vf_lr", "pi_lr", "gamma", "gae_lambda")


class RunnerState(NamedTuple):
    """Everything that changes during training (a pytree; checkpoint it as is).

    Attributes:
      pi_params: policy parameters (``{"net": flax params}`` plus ``"log_std"`` for
        continuous actions).
      vf_params: critic parameters.
      vf_opt_state: the critic's adam state.
      pi_opt_state: the policy's adam state (vpg only; ``()`` otherwise).
      obs_stats: running observation statistics.
      env_state: vmapped gymnax environment states.
      obs: current raw observations ``[num_envs, ...]``.
      ep_return: running return of each environment's current episode.
      ep_length: running length of each environment's current episode.
      return_buffer: returns of the last ``return_window`` finished episodes.
      length_buffer: their lengths.
      num_episodes: episodes finished so far.
      key: PRNG key (training is a deterministic function of it).
      update: number of updates done.
      hparams: the traced hyperparameters (:data:`HPARAMS`).
    """

    pi_params: PyTree
    vf_params: PyTree
    vf_opt_state: PyTree
    pi_opt_state: PyTree
    obs_stats: RunningStats
    env_state: PyTree
    obs: Array
    ep_return: Array
    ep_length: Array
    return_buffer: Array
    length_buffer: Array
    num_episodes: Array
    key: Array
    update: Array
    hparams: dict[str, Array]


class Trainer(NamedTuple):
    """The pure pieces of training.

    Attributes:
      init: ``init(key, hparams=None) -> RunnerState``.
      update: ``update(state) -> (state, metrics)``: one rollout, one policy step, one
        critic fit. Scan it for many.
      config: the validated config.
    """

    init: Callable[..., RunnerState]
    update: Callable[[RunnerState], tuple[RunnerState, dict[str, Array]]]
    config: Config


@dataclasses.dataclass(frozen=True)
class _ActionSpec:
    discrete: bool
    dim: int  # number of actions (discrete) or action dimensions (continuous)
    low: np.ndarray | None = None
    high: np.ndarray | None = None


def _action_spec(space: Any) -> _ActionSpec:
    from gymnax.environments import spaces

    if isinstance(space, spaces.Discrete):
        return _ActionSpec(True, int(space.n))
    if isinstance(space, spaces.Box):
        shape = tuple(space.shape)
        if len(shape) != 1:
            raise ValueError(f"only flat Box action spaces are supported; got shape {shape}.")
        low = np.broadcast_to(np.asarray(space.low, np.float32), shape)
        high = np.broadcast_to(np.asarray(space.high, np.float32), shape)
        return _ActionSpec(False, shape[0], low, high)
    raise ValueError(
        f"unsupported action space {type(space).__name__}; npgjax trains Discrete and Box."
    )


def _permutations(key: Array, num: int, n: int) -> Array:
    """``num`` random permutations of ``range(n)``, shape ``[num, n]``, from one sort.

    Each row sorts random bits with the index packed into the low bits of the same
    uint32 (a single-operand sort, much cheaper on CPU than ``jax.random.permutation``'s
    key-value sort). Ties in the random high bits are broken by index, a bias of order
    ``n / 2**(32 - log2(n))`` per pair, negligible for minibatch shuffling.
    """
    bits = max(1, (n - 1).bit_length())
    if bits > 24:  # too few random bits left: fall back to the exact method
        return jax.vmap(lambda k: jax.random.permutation(k, n))(jax.random.split(key, num))
    high = jax.random.bits(key, (num, n), jnp.uint32) >> bits << bits
    packed = high | jnp.arange(n, dtype=jnp.uint32)
    return (jnp.sort(packed, axis=-1) & jnp.uint32((1 << bits) - 1)).astype(jnp.int32)


def make_trainer(config: Config) -> Trainer:
    """Build the pure ``init`` and ``update`` functions for ``config``.

    Args:
      config: a :class:`npgjax.rl.Config` (see :func:`npgjax.rl.get_config`).

    Returns:
      A :class:`Trainer`. ``update`` runs one rollout and one policy and critic update;
      scan it for many.

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
    env, env_params = import_gymnax().make(config.env)
    aspec = _action_spec(env.action_space(env_params))
    obs_shape = tuple(env.observation_space(env_params).shape)
    obs_dim = int(np.prod(obs_shape))
    E, T = config.num_envs, config.num_steps
    B = E * T
    pi_net = MLP(config.hidden, aspec.dim, config.activation, out_scale=0.01)
    vf_net = MLP(config.hidden, 1, config.activation, out_scale=1.0)
    n_fisher = max(1, int(round(config.fisher_fraction * B)))
    mb = config.vf_minibatch or B
    n_mb = B // mb

    # ------------------------------------------------------------ model pieces
    def policy(pi_params: PyTree, obs: Array) -> Any:
        out = pi_net.apply(pi_params["net"], obs)
        if aspec.discrete:
            return Categorical(out)
        return DiagGaussian(out, pi_params["log_std"])

    def value(vf_params: PyTree, obs: Array) -> Array:
        return vf_net.apply(vf_params, obs)[..., 0]

    def to_env_action(a: Array) -> Array:
        if aspec.discrete:
            return a
        if np.all(np.isfinite(aspec.low)) and np.all(np.isfinite(aspec.high)):
            low, high = jnp.asarray(aspec.low), jnp.asarray(aspec.high)
            return low + (jnp.clip(a, -1.0, 1.0) + 1.0) * 0.5 * (high - low)
        return a

    def prep(stats: RunningStats, obs: Array) -> Array:
        obs = obs.reshape(obs.shape[: obs.ndim - len(obs_shape)] + (obs_dim,))
        return normalize(stats, obs) if config.normalize_obs else obs

    vf_tx = optax.inject_hyperparams(optax.adam)(learning_rate=config.vf_lr)
    pi_tx = optax.inject_hyperparams(optax.adam)(learning_rate=config.pi_lr)

    # ------------------------------------------------------------ init
    def init(key: Array, hparams: dict[str, Any] | None = None) -> RunnerState:
        hp = {k: jnp.asarray(getattr(config, k), jnp.float32) for k in HPARAMS}
        for k, v in (hparams or {}).items():
            if k not in HPARAMS:
                raise ValueError(f"unknown hparam {k!r}; tracable hparams are {HPARAMS}.")
            hp[k] = jnp.asarray(v, jnp.float32)
        key, k_pi, k_vf, k_env = jax.random.split(key, 4)
        dummy = jnp.zeros((1, obs_dim))
        pi_params: dict[str, Any] = {"net": pi_net.init(k_pi, dummy)}
        if not aspec.discrete:
            pi_params["log_std"] = jnp.full((aspec.dim,), config.init_log_std, jnp.float32)
        vf_params = vf_net.init(k_vf, dummy)
        vf_opt_state = vf_tx.init(vf_params)
        vf_opt_state.hyperparams["learning_rate"] = hp["vf_lr"]
        pi_opt_state = ()
        if config.algo == "vpg":
            pi_opt_state = pi_tx.init(pi_params)
            pi_opt_state.hyperparams["learning_rate"] = hp["pi_lr"]
        obs, env_state = jax.vmap(env.reset, in_axes=(0, None))(
            jax.random.split(k_env, E), env_params
        )
        W = config.return_window
        return RunnerState(
            pi_params=pi_params,
            vf_params=vf_params,
            vf_opt_state=vf_opt_state,
            pi_opt_state=pi_opt_state,
            obs_stats=init_stats((obs_dim,)),
            env_state=env_state,
            obs=obs,
            ep_return=jnp.zeros(E),
            ep_length=jnp.zeros(E, jnp.int32),
            return_buffer=jnp.zeros(W),
            length_buffer=jnp.zeros(W),
            num_episodes=jnp.zeros((), jnp.int32),
            key=key,
            update=jnp.zeros((), jnp.int32),
            hparams=hp,
        )

    # ------------------------------------------------------------ rollout
    def rollout(state: RunnerState, key: Array):
        stats, pi_params = state.obs_stats, state.pi_params

        def step(carry, keys):
            env_state, obs, ep_ret, ep_len = carry
            nobs = prep(stats, obs)
            dist = policy(pi_params, nobs)
            action = dist.sample(keys[0])
            logp = dist.log_prob(action)
            obs2, env_state, reward, term, trunc, info = jax.vmap(
                env.step, in_axes=(0, 0, 0, None)
            )(keys[1:], env_state, to_env_action(action), env_params)
            reward = reward.astype(jnp.float32)
            done = term | trunc
            ep_ret = ep_ret + reward
            ep_len = ep_len + 1
            tr = {
                "raw_obs": obs.reshape(E, obs_dim).astype(jnp.float32),
                "obs": nobs,
                "actions": action,
                "old_logp": logp,
                "reward": reward,
                "terminated": term,
                "truncated": trunc,
                "done": done,
                "next_obs": prep(stats, info["final_observation"]),
                "ep_return": ep_ret,
                "ep_length": ep_len,
            }
            ep_ret = jnp.where(done, 0.0, ep_ret)
            ep_len = jnp.where(done, 0, ep_len)
            return (env_state, obs2, ep_ret, ep_len), tr

        carry = (state.env_state, state.obs, state.ep_return, state.ep_length)
        # All keys up front: one split instead of two per step.
        carry, traj = jax.lax.scan(step, carry, jax.random.split(key, (T, E + 1)))
        return carry, traj

    def record_episodes(state: RunnerState, traj: dict[str, Array]):
        W = config.return_window
        done = traj["done"].reshape(-1)
        idx = jnp.cumsum(done) - 1
        n_new = jnp.sum(done)
        keep = done & (idx >= n_new - W)
        pos = jnp.where(keep, (state.num_episodes + idx) % W, W)
        rbuf = state.return_buffer.at[pos].set(traj["ep_return"].reshape(-1), mode="drop")
        lbuf = state.length_buffer.at[pos].set(
            traj["ep_length"].reshape(-1).astype(jnp.float32), mode="drop"
        )
        total = state.num_episodes + n_new.astype(jnp.int32)
        valid = jnp.arange(W) < jnp.minimum(total, W)
        cnt = jnp.sum(valid)
        mean_ret = jnp.where(cnt > 0, jnp.sum(rbuf * valid) / jnp.maximum(cnt, 1), jnp.nan)
        mean_len = jnp.where(cnt > 0, jnp.sum(lbuf * valid) / jnp.maximum(cnt, 1), jnp.nan)
        return rbuf, lbuf, total, mean_ret, mean_len

    # ------------------------------------------------------------ critic
    def fit_critic(vf_params, vf_opt_state, obs, targets, key):
        def loss(p, o, t):
            return jnp.mean((value(p, o) - t) ** 2)

        def epoch(carry, perm):
            p, s = carry
            o = obs[perm].reshape(n_mb, mb, obs_dim)
            t = targets[perm].reshape(n_mb, mb)

            def mb_step(c, xs):
                p, s = c
                g = jax.grad(loss)(p, *xs)
                u, s = vf_tx.update(g, s, p)
                return (optax.apply_updates(p, u), s), None

            (p, s), _ = jax.lax.scan(mb_step, (p, s), (o, t))
            return (p, s), None

        (vf_params, vf_opt_state), _ = jax.lax.scan(
            epoch, (vf_params, vf_opt_state), _permutations(key, config.vf_epochs, B)
        )
        return vf_params, vf_opt_state

    # ------------------------------------------------------------ policy
    def log_prob_fn(p, b):
        return policy(p, b["obs"]).log_prob(b["actions"])

    def dist_fn(p, b):
        return policy(p, b["obs"])

    def loss_fn(p, b):
        return surrogate_loss(log_prob_fn(p, b), b["old_logp"], b["adv"])

    def policy_step(state: RunnerState, batch: dict[str, Array], traj, next_values, key):
        hp = dict(state.hparams)
        if config.max_kl_decay != 1.0:
            frac = state.update.astype(jnp.float32) / config.num_updates
            hp["max_kl"] = hp["max_kl"] * (1.0 - (1.0 - config.max_kl_decay) * frac)
        params = state.pi_params
        diag = {
            "max_kl": hp["max_kl"],
            "predicted_kl": jnp.nan,
            "cg_iterations": jnp.nan,
            "cg_residual": jnp.nan,
            "cosine": jnp.nan,
            "ls_tries": jnp.nan,
            "ls_accepted": jnp.nan,
        }
        pi_opt_state = state.pi_opt_state
        if config.algo == "vpg":
            g = jax.grad(loss_fn)(params, batch)
            updates, pi_opt_state = pi_tx.update(g, pi_opt_state, params)
            return optax.apply_updates(params, updates), pi_opt_state, diag

        fisher_batch = batch
        if n_fisher < B:
            idx = jax.random.permutation(key, B)[:n_fisher]
            fisher_batch = jax.tree.map(lambda x: x[idx], batch)
        fisher_src = (
            {"dist_fn": dist_fn} if config.fisher == "analytic" else {"log_prob_fn": log_prob_fn}
        )
        extra: dict[str, Any] = {"fisher_batch": fisher_batch}
        if config.algo == "enac":
            g, pre = _enac_gradient(params, batch, traj, next_values, hp)
            fisher_src = {"log_prob_fn": _segment_log_prob_fn}
            extra = {"fisher_mask": pre}
            batch = dict(batch, done=traj["done"].reshape(-1))
        else:
            g = jax.grad(loss_fn)(params, batch)
        parts = [
            precondition_by_fisher(
                **fisher_src,
                max_kl=hp["max_kl"],
                damping=hp["damping"],
                cg_iters=config.cg_iters,
                cg_tol=0.0,
                centered=config.algo == "enac",
            ),
            optax.scale(-1.0),
        ]
        if config.algo == "trpo":
            parts.append(
                trust_region_line_search(
                    loss_fn,
                    mean_kl(dist_fn),
                    max_kl=hp["max_kl"],
                    shrink=config.ls_shrink,
                    max_tries=config.ls_max_tries,
                )
            )
        tx = optax.chain(*parts)
        updates, opt_state = tx.update(g, tx.init(params), params, batch=batch, **extra)
        pre_state = opt_state[0]
        diag.update(
            predicted_kl=pre_state.predicted_kl,
            cg_iterations=pre_state.cg_iterations.astype(jnp.float32),
            cg_residual=pre_state.cg_residual,
            cosine=pre_state.cosine,
        )
        if config.algo == "trpo":
            diag.update(
                ls_tries=opt_state[2].tries.astype(jnp.float32),
                ls_accepted=opt_state[2].accepted.astype(jnp.float32),
            )
        return optax.apply_updates(params, updates), pi_opt_state, diag

    def _segment_log_prob_fn(p, b):
        lp = log_prob_fn(p, b).reshape(T, E)
        return segment_log_probs(lp, b["done"].reshape(T, E))[0]

    def _enac_gradient(params, batch, traj, next_values, hp):
        R, seg_mask = segment_returns(
            traj["reward"], next_values, traj["terminated"], traj["truncated"], hp["gamma"]
        )
        b = dict(batch, done=traj["done"].reshape(-1))
        g = jax.grad(lambda p: enac_objective(_segment_log_prob_fn(p, b), R, seg_mask))(params)
        return g, seg_mask.astype(jnp.float32)

    # ------------------------------------------------------------ one update
    def update(state: RunnerState) -> tuple[RunnerState, dict[str, Array]]:
        hp = state.hparams
        key, k_roll, k_vf, k_fisher = jax.random.split(state.key, 4)
        (env_state, obs, ep_ret, ep_len), traj = rollout(state, k_roll)
        values = value(state.vf_params, traj["obs"])
        next_values = value(state.vf_params, traj["next_obs"])
        adv, targets = gae(
            traj["reward"], values, next_values, traj["terminated"], traj["truncated"],
            hp["gamma"], hp["gae_lambda"],
        )
        flat = {k: traj[k].reshape((B,) + traj[k].shape[2:]) for k in ("obs", "actions",
                                                                          "old_logp")}
        a = adv.reshape(B)
        flat["adv"] = normalize_advantages(a) if config.normalize_adv else a
        old_dist = policy(state.pi_params, flat["obs"])
        pi_params, pi_opt_state, diag = policy_step(state, flat, traj, next_values, k_fisher)
        new_dist = policy(pi_params, flat["obs"])
        vf_params, vf_opt_state = fit_critic(
            state.vf_params, state.vf_opt_state, flat["obs"], targets.reshape(B), k_vf
        )
        obs_stats = state.obs_stats
        if config.normalize_obs:
            obs_stats = update_stats(obs_stats, traj["raw_obs"])
        rbuf, lbuf, n_ep, mean_ret, mean_len = record_episodes(state, traj)
        done = traj["done"]
        n_done = jnp.sum(done)
        metrics = {
            "env_steps": (state.update + 1) * B,
            "return": mean_ret,
            "episode_length": mean_len,
            "episodes": n_ep,
            "rollout_return": jnp.where(
                n_done > 0, jnp.sum(traj["ep_return"] * done) / jnp.maximum(n_done, 1), jnp.nan
            ),
            "kl": jnp.mean(old_dist.kl(new_dist)),
            "entropy": jnp.mean(old_dist.entropy()),
            "value_loss": jnp.mean((values - targets) ** 2),
            "explained_variance": explained_variance(values, targets),
            **diag,
        }
        new_state = RunnerState(
            pi_params=pi_params,
            vf_params=vf_params,
            vf_opt_state=vf_opt_state,
            pi_opt_state=pi_opt_state,
            obs_stats=obs_stats,
            env_state=env_state,
            obs=obs,
            ep_return=ep_ret,
            ep_length=ep_len,
            return_buffer=rbuf,
            length_buffer=lbuf,
            num_episodes=n_ep,
            key=key,
            update=state.update + 1,
            hparams=hp,
        )
        return new_state, metrics

    return Trainer(init, update, config)


def make_train(config: Config) -> Callable[..., tuple[RunnerState, dict[str, Array]]]:
    """``train(key, hparams=None) -> (final_state, metrics)``: the whole run, one function.

    ``metrics`` holds one entry per update (arrays of length ``config.num_updates``).
    Jit it; vmap it over keys for seeds, and over ``hparams`` (a dict of
    :data:`HPARAMS` entries, e.g. ``{"max_kl": jnp.array([...])}``) for sweeps.

    Args:
      config: a :class:`npgjax.rl.Config`.

    Returns:
      The pure training function.

    Examples:
      >>> import jax
      >>> from npgjax.rl import get_config, make_train
      >>> cfg = get_config("CartPole-v1", total_timesteps=64, num_envs=2, num_steps=16)
      >>> _, metrics = jax.jit(make_train(cfg))(jax.random.PRNGKey(0))
      >>> metrics["return"].shape
      (2,)
    """
    trainer = make_trainer(config)

    def train(key: Array, hparams: dict[str, Any] | None = None):
        state = trainer.init(key, hparams)

        def body(s, _):
            return trainer.update(s)

        return jax.lax.scan(body, state, None, length=trainer.config.num_updates)

    return train
