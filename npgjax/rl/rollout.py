"""Rollouts: a ``lax.scan`` over steps of vmapped, auto-resetting gymnax environments.

Termination and truncation are kept apart (GAE bootstraps from the true next
observation at a truncation), and each step records the running episode return and
length, from which :func:`record_episodes` keeps the last finished episodes. A recurrent
policy's hidden state rides in the carry, reset to zeros after every episode end.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from npgjax.rl.envs import EnvSpec
from npgjax.rl.recurrent import reset_where

Array = jax.Array
PyTree = Any

__all__ = ["collect", "record_episodes"]


def collect(
    spec: EnvSpec,
    policy: Callable[[Array], Any],
    prep: Callable[[Array], Array],
    carry: tuple[PyTree, ...],
    key: Array,
    num_steps: int,
) -> tuple[tuple[PyTree, ...], dict[str, Array]]:
    """Run ``num_steps`` steps of every environment in ``carry``.

    Args:
      spec: the environment.
      policy: ``policy(prepared_obs) -> distribution`` over a batch of environments; for
        a recurrent policy (a 5-tuple ``carry``), ``policy(prepared_obs, hidden) ->
        (distribution, hidden)``.
      prep: observation preprocessing (normalisation), applied to the raw observations.
      carry: ``(env_state, raw obs, episode return, episode length)`` per environment,
        plus, for a recurrent policy, its hidden state ``[E, H]`` (reset to zeros after
        each episode end, so it is always the state for the current observation).
      key: PRNG key.
      num_steps: steps per environment.

    Returns:
      The new carry, and the trajectory: ``[T, E, ...]`` arrays ``raw_obs``, ``obs``
      (prepared), ``actions``, ``old_logp``, ``reward``, ``terminated``, ``truncated``,
      ``done``, ``next_obs`` (prepared true next observation, before any reset),
      ``ep_return`` and ``ep_length`` (running, including this step); with a recurrent
      policy also ``carry``, the hidden state fed to the policy at each step ``[T, E, H]``.
    """
    E = carry[1].shape[0]
    env_step = jax.vmap(spec.env.step, in_axes=(0, 0, 0, None))
    recurrent = len(carry) == 5

    def step(carry, keys):
        env_state, obs, ep_ret, ep_len = carry[:4]
        nobs = prep(obs)
        if recurrent:
            hidden = carry[4]
            dist, new_hidden = policy(nobs, hidden)
        else:
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
        if recurrent:
            tr["carry"] = hidden
            return (env_state, obs2, ep_ret, ep_len, reset_where(done, new_hidden)), tr
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
