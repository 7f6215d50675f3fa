"""A trained policy outside the training loop: save, load, act and evaluate.

:func:`load_policy` reads a run directory (written by ``npgjax-train`` or by
:func:`save_policy`) and returns a :class:`Policy`, whose ``act`` is a pure function of
the observations: it normalises them with the training statistics, runs the trained
network (built by :func:`~npgjax.rl.make_trainer`, so the code is the trainer's own)
and maps the action to the environment's range.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from npgjax.rl.checkpoint import (
    CheckpointError,
    config_dict,
    config_from_dict,
    read_checkpoint,
    restore,
    write_checkpoint,
)
from npgjax.rl.configs import Config
from npgjax.rl.envs import EnvSpec
from npgjax.rl.evaluation import evaluate_episodes
from npgjax.rl.normalize import RunningStats
from npgjax.rl.trainer import RunnerState, Trainer, make_trainer

Array = jax.Array
PyTree = Any

__all__ = ["Policy", "evaluate_policy", "load_policy", "save_policy"]


class _Static:
    """The non-array part of a :class:`Policy` (compared by identity under ``jit``)."""

    def __init__(self, config: Config, env: EnvSpec, apply: Callable[..., Array],
                 init_carry: Callable[[int], PyTree]):
        self.config, self.env, self.apply, self.init_carry = config, env, apply, init_carry


def _no_carry(n: int) -> PyTree:
    return ()


@dataclasses.dataclass(frozen=True, eq=False)
class Policy:
    """A trained policy: parameters, observation statistics and a pure ``act``.

    A pytree (its arrays are ``params`` and ``obs_stats``), so it can be passed into
    ``jax.jit`` or closed over.

    Attributes:
      params: the policy parameters (``pi_params`` of the training state).
      obs_stats: the running observation statistics used to normalise observations.
      config: the training :class:`~npgjax.rl.Config`.
      env: the :class:`~npgjax.rl.EnvSpec` (environment, params, spaces).
    """

    params: PyTree
    obs_stats: RunningStats
    config: Config
    env: EnvSpec
    _apply: Callable[..., Array] = dataclasses.field(repr=False)
    _init_carry: Callable[[int], PyTree] = dataclasses.field(default=_no_carry, repr=False)

    @property
    def recurrent(self) -> bool:
        """Whether the policy has memory (``network="gru"``): ``act`` then needs ``carry``."""
        return bool(jax.tree.leaves(self._init_carry(1)))

    def init_carry(self, batch_shape: Sequence[int] = ()) -> PyTree:
        """The initial hidden state for observations with leading axes ``batch_shape``.

        Zeros ``[*batch_shape, H]`` for a recurrent policy; ``()`` for a memoryless one.
        Reset a row to this state when its episode ends.
        """
        lead = tuple(batch_shape)
        carry = self._init_carry(int(np.prod(lead, dtype=int)))
        return jax.tree.map(lambda h: h.reshape(lead + h.shape[1:]), carry)

    def act(self, obs: Array, key: Array | None = None, carry: PyTree = None) -> Any:
        """Environment actions for one observation or a batch (any leading axes).

        Args:
          obs: ``[*obs_shape]`` or ``[..., *obs_shape]`` raw observations.
          key: None for the deterministic action (argmax or mean); a PRNG key to sample
            (independently for each observation).
          carry: the hidden state of a recurrent policy, ``[..., H]`` with the leading
            axes of ``obs`` (start from :meth:`init_carry`); None for a memoryless one.

        Returns:
          Actions with the leading axes of ``obs``, in the environment's action range
          (box actions scaled and clipped to ``[low, high]``); with ``carry``, the pair
          ``(actions, next_carry)``.

        Raises:
          ValueError: if the trailing axes of ``obs`` are not the observation shape, or
            a recurrent policy is called without ``carry``.

        Examples:
          A recurrent policy, stepped through an episode::

              carry = policy.init_carry()
              action, carry = policy.act(obs, carry=carry)
        """
        obs = jnp.asarray(obs)
        shape = self.env.obs_shape
        n = len(shape)
        if obs.ndim < n or tuple(obs.shape[obs.ndim - n:]) != shape:
            raise ValueError(f"{self.env.name}: act expects observations of shape {shape} "
                             f"(or [..., *{shape}] for a batch), got {tuple(obs.shape)}.")
        lead = obs.shape[: obs.ndim - n]
        flat = obs.reshape((-1, *shape)).astype(jnp.float32)
        if carry is None:
            if self.recurrent:
                raise ValueError("a recurrent policy (network='gru') needs carry=: start from "
                                 "policy.init_carry(batch_shape) and pass back what act returns.")
            actions = self._apply(self.params, self.obs_stats, flat, key)
            return actions.reshape(lead + actions.shape[1:])
        n = len(lead)
        flat_carry = jax.tree.map(lambda h: h.reshape((-1, *h.shape[n:])), carry)
        actions, new = self._apply(self.params, self.obs_stats, flat, key, flat_carry)
        new = jax.tree.map(lambda h: h.reshape(lead + h.shape[1:]), new)
        return actions.reshape(lead + actions.shape[1:]), new


jax.tree_util.register_pytree_node(
    Policy,
    lambda p: ((p.params, p.obs_stats), _Static(p.config, p.env, p._apply, p._init_carry)),
    lambda s, c: Policy(c[0], c[1], s.config, s.env, s.apply, s.init_carry),
)


def evaluate_policy(policy: Policy, key: Array, num_episodes: int, *,
                    stochastic: bool = False, max_steps: int | None = None
                    ) -> tuple[Array, Array]:
    """Returns and lengths of ``num_episodes`` episodes of ``policy``, side by side.

    Pure and jittable (``num_episodes``, ``stochastic`` and ``max_steps`` static); vmap
    it over keys or over policies. The deterministic policy is the one the training
    evaluates (``eval_return``).

    Args:
      policy: from :func:`load_policy`.
      key: PRNG key for resets, environment noise and sampled actions.
      num_episodes: episodes, one environment each.
      stochastic: sample actions instead of the argmax or mean.
      max_steps: step cap per episode (default: the environment's).

    Returns:
      ``(returns [num_episodes], lengths [num_episodes])``.
    """
    spec = policy.env
    if not spec.discrete:  # act already maps to the env's range: no second mapping
        inf = np.full(spec.action_dim, np.inf, np.float32)
        spec = dataclasses.replace(spec, low=-inf, high=inf)
    if policy.recurrent:
        return evaluate_episodes(
            spec, lambda o, k, c: policy.act(o, k if stochastic else None, carry=c), key,
            num_episodes, max_steps, carry=policy.init_carry((num_episodes,)))
    return evaluate_episodes(
        spec, lambda o, k: policy.act(o, k if stochastic else None), key, num_episodes,
        max_steps)


def _batched(state: RunnerState) -> RunnerState:
    return state if jnp.ndim(state.update) else jax.tree.map(lambda x: x[None], state)


def _target(trainer: Trainer, seeds: int) -> RunnerState:
    keys = jax.ShapeDtypeStruct((seeds, 2), jnp.uint32)
    return jax.eval_shape(jax.vmap(trainer.init), keys)


def save_policy(path: str | Path, trainer_or_config: Trainer | Config, state: RunnerState,
                ) -> Path:
    """Save the final state of :func:`~npgjax.rl.make_train` for :func:`load_policy`.

    Writes ``checkpoint.msgpack`` and ``checkpoint.json`` (no pickle) into the directory
    ``path``, in the format of the command line's run directories.

    Args:
      path: a directory (created if needed).
      trainer_or_config: the :class:`~npgjax.rl.Trainer` or the config of the training.
      state: its :class:`~npgjax.rl.RunnerState`, of one seed or vmapped over seeds.

    Returns:
      The directory.

    Raises:
      CheckpointError: a state that does not match the config (another network, env).
    """
    trainer = (trainer_or_config if isinstance(trainer_or_config, Trainer)
               else make_trainer(trainer_or_config))
    host = jax.device_get(_batched(state))
    seeds = int(np.shape(host.update)[0])
    from flax import serialization

    restore(_target(trainer, seeds), serialization.to_state_dict(host), "save_policy")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"save_policy: {path} is a file, not a directory.")
    path.mkdir(parents=True, exist_ok=True)
    config = trainer.config
    write_checkpoint(path, host, {"kind": "policy", "seeds": seeds,
                                  "env_is_id": isinstance(config.env, str),
                                  "config": config_dict(config)})
    return path


def load_policy(run_dir: str | Path, seed: int | Sequence[int] = 0, env: Any = None, *,
                policy_torso: Any = None) -> Policy:
    """The trained policy of seed ``seed`` in ``run_dir``.

    Args:
      run_dir: a run directory of ``npgjax-train`` or a directory from :func:`save_policy`.
      seed: which trained seed (0 to ``seeds - 1``); a sequence of seeds gives one
        :class:`Policy` whose arrays have a leading seed axis, to ``jax.vmap`` over.
      env: the environment object, for a run trained on one rather than a registry id
        (the registry id, kwargs and params are read from the checkpoint).
      policy_torso: the flax torso, for a policy trained with ``policy_torso``.

    Returns:
      A :class:`Policy`.

    Raises:
      CheckpointError: (a ValueError) no checkpoint in ``run_dir``, a corrupt file, an
        incompatible format version, or a state that does not match the config.
      ValueError: a seed out of range.

    Examples:
      >>> import tempfile, jax, jax.numpy as jnp
      >>> from npgjax.rl import get_config, load_policy, make_train, save_policy
      >>> cfg = get_config("CartPole-v1", total_timesteps=32, num_envs=2, num_steps=16)
      >>> state, _ = jax.jit(make_train(cfg))(jax.random.PRNGKey(0))
      >>> policy = load_policy(save_policy(tempfile.mkdtemp(), cfg, state))
      >>> policy.act(jnp.zeros(4)).shape, policy.act(jnp.zeros((3, 4))).shape
      ((), (3,))
    """
    run_dir = Path(run_dir)
    meta, state_dict, _ = read_checkpoint(run_dir)
    seeds = int(meta.get("seeds", 0))
    chosen = np.atleast_1d(np.asarray(seed))
    if (chosen.dtype.kind not in "iu" or chosen.ndim != 1 or chosen.size == 0
            or not np.all((chosen >= 0) & (chosen < seeds))):
        raise ValueError(f"seed {seed!r} is out of range: {run_dir} has seeds 0 to {seeds - 1}.")
    config = config_from_dict(meta["config"], env, bool(meta.get("env_is_id", True)))
    trainer = make_trainer(config, policy_torso=policy_torso)
    target = _target(trainer, seeds)
    where = str(run_dir / "checkpoint.msgpack")
    parts = {}
    for name in ("pi_params", "obs_stats"):
        if name not in state_dict:
            raise CheckpointError(f"{where}: the state has no {name!r}.")
        parts[name] = restore(getattr(target, name), state_dict[name], where)
    index = chosen if np.ndim(seed) else int(chosen[0])
    one = jax.tree.map(lambda x: jnp.asarray(x[index]), parts)
    return Policy(one["pi_params"], RunningStats(*one["obs_stats"]), trainer.config,
                  trainer.env, trainer.act, trainer.init_carry)
