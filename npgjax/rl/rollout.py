"""Rollouts: a ``lax.scan`` over steps of vmapped, auto-resetting gymnax environments.

Termination and truncation are kept apart (GAE bootstraps from the true next
observation at a truncation), and each step records the running episode return and
length, from which :func:`record_episodes` keeps the last finished episodes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from npgjax.rl.envs import EnvSpec

Array = jax.Array
PyTree = Any

__all__ = ["collect", "record_episodes"]


def collect(
    spec: EnvSpec,
    policy: Callable[[Array], Any],
    prep: Callable[[Array], Array],
    carry: tuple[PyTree, Array, Array, Array],
    key: Array,
    num_steps: int,
) -> tuple[tuple[PyTree, Array, Array, Array], dict[str, Array]]:
    """Run ``num_steps`` steps of every environment in ``carry``.

    Args:
      spec: the environment.
      policy: ``policy(prepared_obs) -> distribution`` over a batch of environments.
      prep: observation preprocessing (normalisation), applied to the raw observations.
      carry: ``(env_state, raw obs, episode return, episode length)`` per environment.
      key: PRNG key.
      num_steps: steps per environment.

    Returns:
      The new carry, and the trajectory: ``[T, E, ...]`` arrays ``raw_obs``, ``obs``
      (prepared), ``actions``, ``old_logp``, ``reward``, ``terminated``, ``truncated``,
      ``done``, ``next_obs`` (prepared true next observation, before any reset),
      ``ep_return`` and ``ep_length`` (running, including this step).
    """
    E = carry[1].shape[0]
    env_step = jax.vmap(spec.env.step, in_axes=(0, 0, 0, None))

    def step(carry, keys):
        env_state, obs, ep_ret, ep_len = carry
        nobs = prep(obs)
        dist = policy(nobs)
        action = dist.sample(keys[0])
        obs2, env_state, reward, term, trunc, info = env_step(
            keys[1:], env_state, spec.to_env_action(action), spec.params)
        reward = reward.astype(jnp.float32)
        done = term | trunc
        ep_ret, ep_len = ep_ret + reward, ep_len + 1
        tr = {
            "raw_obs": obs.astype(jnp.float32), "obs": nobs, "actions": action,
            "old_logp": dist.log_prob(action), "reward": reward, "terminated": term,
            "truncated": trunc, "done": done, "next_obs": prep(info["final_observation"]),
            "ep_return": ep_ret, "ep_length": ep_len,
        }
        ep_ret = jnp.where(done, 0.0, ep_ret)
        ep_len = jnp.where(done, 0, ep_len)
        return (env_state, obs2, ep_ret, ep_len), tr

    # All keys up front: one split instead of two per step.
    return jax.lax.scan(step, carry, jax.random.split(key, (num_steps, E + 1)))


def record_episodes(
    buffers: tuple[Array, Array, Array], traj: dict[str, Array]
) -> tuple[tuple[Array, Array, Array], Array, Array]:
    """Push the episodes that ended in ``traj`` into ring buffers of the last ``W``.

    Args:
      buffers: ``(returns [W], lengths [W], episodes so far)``.
      traj: a trajectory from :func:`collect`.

    Returns:
      ``(new buffers, mean return, mean length)`` over the buffered episodes (NaN
      before the first episode ends).
    """
    rbuf, lbuf, num = buffers
    W = rbuf.shape[0]
    done = traj["done"].reshape(-1)
    idx = jnp.cumsum(done) - 1
    n_new = jnp.sum(done)
    keep = done & (idx >= n_new - W)
    pos = jnp.where(keep, (num + idx) % W, W)
    rbuf = rbuf.at[pos].set(traj["ep_return"].reshape(-1), mode="drop")
    lbuf = lbuf.at[pos].set(traj["ep_length"].reshape(-1).astype(jnp.float32), mode="drop")
    total = num + n_new.astype(jnp.int32)
    valid = jnp.arange(W) < jnp.minimum(total, W)
    cnt = jnp.sum(valid)
    mean_ret = jnp.where(cnt > 0, jnp.sum(rbuf * valid) / jnp.maximum(cnt, 1), jnp.nan)
    mean_len = jnp.where(cnt > 0, jnp.sum(lbuf * valid) / jnp.maximum(cnt, 1), jnp.nan)
    return (rbuf, lbuf, total), mean_ret, mean_len
