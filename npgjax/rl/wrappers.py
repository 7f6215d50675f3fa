"""Observation wrappers for gymnax environments: partially observed versions of a task.

:class:`KeepObservations` keeps chosen entries of a flat observation, e.g. CartPole-v1
without its velocities (``keep=(0, 2)``: cart position and pole angle), a task that a
memoryless policy cannot solve and a recurrent one can. The config option ``obs_keep``
(and ``npgjax-train --obs-keep 0,2``) applies it in :func:`npgjax.rl.make_env`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

__all__ = ["KeepObservations", "check_keep"]


def check_keep(keep: Sequence[int], obs_shape: tuple[int, ...], name: str = "env"
               ) -> tuple[int, ...]:
    """``keep`` as a tuple of valid indices into a flat observation of ``obs_shape``.

    Raises:
      ValueError: observations that are not flat, no index, repeated or out-of-range
        indices (the valid range is named).
    """
    keep = tuple(int(i) for i in keep)
    if len(obs_shape) != 1:
        raise ValueError(f"obs_keep needs flat observations; {name} has observations of "
                         f"shape {obs_shape}.")
    n = obs_shape[0]
    bad = [i for i in keep if not -n <= i < n]
    if not keep or bad:
        raise ValueError(f"obs_keep {keep}: {name} observations have {n} entries, so indices "
                         f"must be in 0..{n - 1}" + (f" (bad: {bad})." if bad else "."))
    if len({i % n for i in keep}) != len(keep):
        raise ValueError(f"obs_keep {keep} repeats an index.")
    return keep


class KeepObservations:
    """A gymnax environment whose observations keep only the entries ``keep``.

    Reset, step (the auto-reset observation and ``info["final_observation"]`` alike) and
    the observation space are all restricted; everything else is the wrapped
    environment's.

    Args:
      env: a gymnax environment with flat observations.
      keep: indices to keep, in the order given.

    Raises:
      ValueError: bad indices (see :func:`check_keep`).

    Examples:
      >>> import jax
      >>> from npgjax.rl import make_env
      >>> from npgjax.rl.wrappers import KeepObservations
      >>> env = KeepObservations(make_env("CartPole-v1").env, (0, 2))
      >>> obs, state = env.reset(jax.random.PRNGKey(0), env.default_params)
      >>> obs.shape, env.observation_space(env.default_params).shape
      ((2,), (2,))
    """

    def __init__(self, env: Any, keep: Sequence[int]):
        shape = tuple(env.observation_space(env.default_params).shape)
        self._env = env
        self.keep = check_keep(keep, shape, getattr(env, "name", type(env).__name__))
        self._idx = np.asarray(self.keep)

    def __getattr__(self, name: str) -> Any:
        if name == "_env":  # not yet set (e.g. while unpickling)
            raise AttributeError(name)
        return getattr(self._env, name)

    @property
    def name(self) -> str:
        return self._env.name

    def _sub(self, obs: Array) -> Array:
        return jnp.asarray(obs)[..., self._idx]

    def reset(self, key: Array, params: Any = None) -> tuple[Array, Any]:
        obs, state = self._env.reset(key, params)
        return self._sub(obs), state

    def step(self, key: Array, state: Any, action: Any, params: Any = None):
        obs, state, reward, term, trunc, info = self._env.step(key, state, action, params)
        info = dict(info)
        if "final_observation" in info:
            info["final_observation"] = self._sub(info["final_observation"])
        return self._sub(obs), state, reward, term, trunc, info

    def observation_space(self, params: Any) -> Any:
        from gymnax.environments import spaces

        space = self._env.observation_space(params)
        low = np.broadcast_to(np.asarray(space.low), space.shape)[self._idx]
        high = np.broadcast_to(np.asarray(space.high), space.shape)[self._idx]
        return spaces.Box(low, high, (len(self.keep),), space.dtype)
