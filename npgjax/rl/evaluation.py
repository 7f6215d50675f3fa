"""Evaluation of the deterministic policy (argmax or mean action) on fresh environments."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from npgjax.rl.envs import EnvSpec

Array = jax.Array

__all__ = ["DEFAULT_EVAL_STEPS", "evaluate_episodes"]

#: Step cap of an evaluation episode for environments whose params set none.
DEFAULT_EVAL_STEPS = 1000


def evaluate_episodes(
    spec: EnvSpec,
    act: Callable[..., Any],
    key: Array,
    num_episodes: int,
    max_steps: int | None = None,
    carry: Any = None,
) -> tuple[Array, Array]:
    """Returns and lengths of ``num_episodes`` episodes run side by side.

    Each environment runs until its first episode ends (termination or truncation) or
    ``max_steps`` steps; the loop stops when all have ended. A recurrent policy gets
    its hidden state ``carry`` and returns the next one (one episode per environment,
    so it never needs a reset).

    Args:
      spec: the environment.
      act: ``act(obs_batch, key) -> actions`` in the policy's action space (mapped to
        the environment's range by ``spec``); with ``carry``, ``act(obs_batch, key,
        carry) -> (actions, carry)``.
      key: PRNG key for resets, environment noise and ``act``.
      num_episodes: episodes (environments).
      max_steps: step cap; default ``spec.max_steps`` or :data:`DEFAULT_EVAL_STEPS`.
      carry: a recurrent policy's initial hidden state (e.g. zeros ``[num_episodes, H]``);
        None for a memoryless ``act``.

    Returns:
      ``(returns [num_episodes], lengths [num_episodes])``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from npgjax.rl import make_env
      >>> from npgjax.rl.evaluation import evaluate_episodes
      >>> spec = make_env("CartPole-v1")
      >>> act = lambda obs, key: jnp.zeros(obs.shape[0], jnp.int32)  # always push left
      >>> ret, length = evaluate_episodes(spec, act, jax.random.PRNGKey(0), 4)
      >>> bool(jnp.all(ret == length)), bool(jnp.all(ret < 20))
      (True, True)
    """
    cap = max_steps or spec.max_steps or DEFAULT_EVAL_STEPS
    k_reset, key = jax.random.split(key)
    obs, state = jax.vmap(spec.env.reset, in_axes=(0, None))(
        jax.random.split(k_reset, num_episodes), spec.params)
    env_step = jax.vmap(spec.env.step, in_axes=(0, 0, 0, None))
    zeros = jnp.zeros(num_episodes, jnp.float32)
    init = (jnp.zeros((), jnp.int32), state, obs, zeros, zeros,
            jnp.ones(num_episodes, bool), key, () if carry is None else carry)

    def cond(c):
        return (c[0] < cap) & jnp.any(c[5])

    def body(c):
        t, state, obs, ret, length, alive, key, mem = c
        key, k_act, k_env = jax.random.split(key, 3)
        if carry is None:
            action = act(obs, k_act)
        else:
            action, mem = act(obs, k_act, mem)
        action = spec.to_env_action(action)
        obs, state, reward, term, trunc, _ = env_step(
            jax.random.split(k_env, num_episodes), state, action, spec.params)
        ret = ret + jnp.where(alive, reward.astype(jnp.float32), 0.0)
        length = length + alive.astype(jnp.float32)
        return t + 1, state, obs, ret, length, alive & ~(term | trunc), key, mem

    out = jax.lax.while_loop(cond, body, init)
    return out[3], out[4]
