"""Environments: any gymnax environment, by registry id or as an object, with its params.

:func:`make_env` turns a config's ``env``, ``env_kwargs`` and ``env_params`` into an
:class:`EnvSpec`: the environment, its params, the observation shape and the action
space in the form the trainer needs (discrete or a flat box, with the map from the
policy's output to the environment's action range).
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from npgjax.rl._gymnax import import_gymnax

__all__ = ["SOLVED_RETURNS", "EnvSpec", "default_target", "env_name", "make_env"]

#: Returns at which an environment counts as solved: gym's ``reward_threshold`` where it
#: has one, else the best possible return of the bsuite task (Pendulum-v1: the usual
#: -250 of RL benchmarks, as gym sets none). ``--target`` defaults to these.
SOLVED_RETURNS: dict[str, float] = {
    "CartPole-v1": 475.0,
    "Acrobot-v1": -100.0,
    "Pendulum-v1": -250.0,
    "MountainCar-v0": -110.0,
    "MountainCarContinuous-v0": 90.0,
    "Catch-bsuite": 1.0,
    "DeepSea-bsuite": 0.99,
    "MemoryChain-bsuite": 1.0,
    "UmbrellaChain-bsuite": 1.0,
}


@dataclasses.dataclass(frozen=True)
class EnvSpec:
    """A built environment and what the trainer needs to know about it.

    Attributes:
      env: the gymnax ``Environment``.
      params: its ``EnvParams``.
      name: the registry id, or the class name of an environment object.
      obs_shape: shape of one observation.
      discrete: whether actions are ``Discrete``.
      action_dim: number of actions (discrete) or action dimensions (box).
      low, high: bounds of a box action space (None for discrete).
    """

    env: Any
    params: Any
    name: str
    obs_shape: tuple[int, ...]
    discrete: bool
    action_dim: int
    low: np.ndarray | None = None
    high: np.ndarray | None = None

    def to_env_action(self, a: jax.Array) -> jax.Array:
        """Map a policy action to the environment: box actions from [-1, 1] to [low, high]."""
        if self.discrete or not (np.all(np.isfinite(self.low)) and np.all(np.isfinite(self.high))):
            return a
        low, high = jnp.asarray(self.low), jnp.asarray(self.high)
        return low + (jnp.clip(a, -1.0, 1.0) + 1.0) * 0.5 * (high - low)

    @property
    def max_steps(self) -> int | None:
        """The episode cap of the params (``max_steps_in_episode``), if they have one."""
        value = getattr(self.params, "max_steps_in_episode", None)
        return None if value is None else int(value)


def env_name(env: Any) -> str:
    """The registry id of ``env``, or its ``name``/class name for an environment object."""
    if isinstance(env, str):
        return env
    name = getattr(env, "name", None)
    return name if isinstance(name, str) else type(env).__name__


def default_target(env: Any) -> float | None:
    """The solved return of ``env`` (see :data:`SOLVED_RETURNS`), or None if unknown."""
    return SOLVED_RETURNS.get(env_name(env))


def _valid_kwargs(factory: Any) -> list[str]:
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return []
    return [n for n, p in sig.parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD,
                                                                   p.KEYWORD_ONLY)]


def _build(env: Any, env_kwargs: dict[str, Any]) -> Any:
    gymnax = import_gymnax()
    if not isinstance(env, str):
        if env_kwargs:
            raise ValueError("env_kwargs apply to a registry id; construct the environment "
                             "object with them instead.")
        if not all(hasattr(env, a) for a in ("reset", "step", "default_params")):
            raise TypeError(f"{env!r} is not a gymnax Environment (it needs reset, step and "
                            "default_params).")
        return env
    if env not in gymnax.registered_envs:
        raise ValueError(f"unknown environment {env!r}; gymnax knows: "
                         f"{', '.join(gymnax.registered_envs)}.")
    from gymnax.registration import _registry

    valid = _valid_kwargs(_registry[env])
    bad = sorted(set(env_kwargs) - set(valid))
    if bad and valid:
        raise ValueError(f"{env}: unknown env kwarg(s) {bad}; valid: {valid or 'none'}.")
    try:
        return gymnax.make(env, **env_kwargs)[0]
    except Exception as e:  # downloads, bad values: one clear line
        raise ValueError(f"cannot build {env} with {env_kwargs or 'no kwargs'}: "
                         f"{type(e).__name__}: {e}") from e


def _params(env: Any, env_params: Any) -> Any:
    default = env.default_params
    if env_params is None:
        return default
    if isinstance(env_params, dict):
        valid = [f.name for f in dataclasses.fields(default)]
        bad = sorted(set(env_params) - set(valid))
        if bad:
            raise ValueError(f"unknown env params field(s) {bad}; valid: {valid}.")
        return default.replace(**env_params)
    if type(env_params) is not type(default):
        raise TypeError(f"env_params must be a {type(default).__name__} (or a dict of its "
                        f"fields), got {type(env_params).__name__}.")
    return env_params


def _action_space(space: Any) -> tuple[bool, int, np.ndarray | None, np.ndarray | None]:
    from gymnax.environments import spaces

    if isinstance(space, spaces.Discrete):
        return True, int(space.n), None, None
    if isinstance(space, spaces.Box):
        shape = tuple(space.shape)
        if len(shape) != 1:
            raise ValueError(f"only flat Box action spaces are supported; got shape {shape}.")
        low = np.broadcast_to(np.asarray(space.low, np.float32), shape)
        high = np.broadcast_to(np.asarray(space.high, np.float32), shape)
        return False, shape[0], low, high
    raise ValueError(
        f"unsupported action space {type(space).__name__}; npgjax trains Discrete and Box."
    )


def make_env(env: Any, env_kwargs: Any = (), env_params: Any = None,
             obs_keep: Any = ()) -> EnvSpec:
    """Build an environment from a registry id or an object, with optional params.

    Args:
      env: a gymnax registry id such as ``"CartPole-v1"``, or a gymnax ``Environment``
        object (your own subclass too).
      env_kwargs: constructor arguments for a registry id (a dict or ``(key, value)``
        pairs), e.g. ``{"size": 16}`` for ``DeepSea-bsuite``.
      env_params: the environment's ``EnvParams``, or a dict of fields to replace in its
        ``default_params`` (e.g. ``{"max_steps_in_episode": 200}``); None for the defaults.
      obs_keep: indices of a flat observation to keep (e.g. ``(0, 2)``: CartPole-v1
        without its velocities), applied by :class:`npgjax.rl.wrappers.KeepObservations`;
        empty keeps everything.

    Returns:
      An :class:`EnvSpec`.

    Raises:
      ValueError: an unknown id, kwarg or params field (the valid ones are listed), an
        unsupported action space, an environment that fails to build, or ``obs_keep``
        indices out of range.

    Examples:
      >>> from npgjax.rl import make_env
      >>> spec = make_env("DeepSea-bsuite", {"size": 4}, {"max_steps_in_episode": 8})
      >>> spec.obs_shape, spec.discrete, spec.action_dim, spec.max_steps
      ((4, 4), True, 2, 8)
    """
    kwargs = dict(env_kwargs)
    built = _build(env, kwargs)
    params = _params(built, env_params)
    if obs_keep:
        from npgjax.rl.wrappers import KeepObservations

        built = KeepObservations(built, obs_keep)
    discrete, dim, low, high = _action_space(built.action_space(params))
    obs_shape = tuple(int(d) for d in built.observation_space(params).shape)
    return EnvSpec(built, params, env_name(env), obs_shape, discrete, dim, low, high)
