"""Training on many devices: environments, seeds or both sharded over a ``jax.sharding`` mesh.

JAX is the engine: the runner state is placed on a :class:`jax.sharding.Mesh` with
:class:`jax.sharding.NamedSharding` and the training function is a plain ``jax.jit``.

* ``shard="envs"``: the environment axis (``num_envs``) of the runner state is split over
  the devices; one policy, and every mean over the batch (gradients, Fisher-vector
  products, KL, advantages' normalisation, the critic's loss) is the mean over the
  *global* batch, because XLA partitions the program and adds the reductions. The
  metrics equal those of the same run on one device, to float tolerance (sums are
  taken in another order).
* ``shard="seeds"``: the seed axis of a vmapped ``train`` is split over the devices:
  independent runs side by side, equal to the vmapped run on one device.
* ``shard="both"``: a two-dimensional mesh ``("seeds", "envs")``.
* ``shard="tasks"``: two devices, everything replicated; each update's policy step runs
  on one and its critic fit on the other (:mod:`npgjax.rl.tasks`).

Random numbers do not depend on the sharding (``jax_threefry_partitionable``, the
default), so a run on N devices is a deterministic function of its key.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from npgjax.rl.configs import Config

# The mesh helpers' first home was this module: importable from here too.
from npgjax.rl.mesh import (  # noqa: F401
    SHARD_MODES,
    check_divisible,
    make_mesh,
    put_global,
    seed_axis,
)
from npgjax.rl.state import RunnerState, Trainer
from npgjax.rl.tasks import TASK_AXIS, make_task_trainer
from npgjax.rl.trainer import make_trainer, run_updates

Array = jax.Array
PyTree = Any

__all__ = ["make_sharded_train", "make_sharded_trainer", "shard_trainer", "state_sharding"]

# RunnerState fields whose leaves carry the environment axis first.
_ENV_FIELDS = ("env_state", "obs", "ep_return", "ep_length", "memory")


def state_sharding(state: RunnerState, mesh: Mesh, batched: bool = False) -> PyTree:
    """The ``NamedSharding`` of every leaf of a runner state on ``mesh``.

    Leaves with the environment axis (the env states, observations, running episode
    returns and lengths, recurrent memory) are split along it over ``"envs"`` (when the
    mesh has that axis); with ``batched`` (states stacked over seeds) the leading axis
    of every leaf is split over ``"seeds"`` (when the mesh has it). All else is
    replicated.

    Args:
      state: a :class:`~npgjax.rl.RunnerState` (or its ``jax.eval_shape``).
      mesh: from :func:`make_mesh`.
      batched: whether the leaves carry a leading seed axis.

    Returns:
      A pytree of :class:`jax.sharding.NamedSharding` shaped like ``state``.
    """
    seeds = "seeds" if "seeds" in mesh.axis_names else None
    envs = "envs" if "envs" in mesh.axis_names else None
    lead = (seeds,) if batched else ()

    def spec(env_axis: bool) -> Callable[[Any], NamedSharding]:
        def leaf(x: Any) -> NamedSharding:
            if (not batched and not env_axis) or len(x.shape) == 0:
                return NamedSharding(mesh, P())
            return NamedSharding(mesh, P(*lead, envs) if env_axis else P(*lead))

        return leaf

    return RunnerState(**{f: jax.tree.map(spec(f in _ENV_FIELDS), getattr(state, f))
                          for f in RunnerState._fields})


def shard_trainer(trainer: Trainer, mesh: Mesh) -> Trainer:
    """The same trainer, its state constrained to ``mesh`` before and after each update.

    ``init`` and ``update`` return states whose environment axis is split over the
    ``"envs"`` axis of ``mesh`` (:func:`jax.lax.with_sharding_constraint`); under
    ``jax.jit`` XLA partitions the rollout and the update accordingly and computes every
    mean over the global batch. Vmap it over seeds with ``spmd_axis_name="seeds"`` when
    the mesh also splits the seeds (see :func:`make_sharded_train`).

    Args:
      trainer: from :func:`npgjax.rl.make_trainer`.
      mesh: a mesh with an ``"envs"`` axis (otherwise the trainer is returned as is).

    Returns:
      A :class:`~npgjax.rl.Trainer` with constrained ``init`` and ``update``.
    """
    if "envs" not in mesh.axis_names:
        return trainer
    envs = NamedSharding(mesh, P("envs"))  # a vmap's spmd_axis_name adds the seed axis

    def constrain(state: RunnerState) -> RunnerState:
        fields = {f: getattr(state, f) for f in RunnerState._fields}
        for f in _ENV_FIELDS:
            fields[f] = jax.tree.map(
                lambda x: jax.lax.with_sharding_constraint(x, envs), fields[f])
        return RunnerState(**fields)

    def init(key: Array, hparams: dict[str, Any] | None = None) -> RunnerState:
        return constrain(trainer.init(key, hparams))

    def update(state: RunnerState) -> tuple[RunnerState, dict[str, Array]]:
        state, metrics = trainer.update(constrain(state))
        return constrain(state), metrics

    return trainer._replace(init=init, update=update)


def make_sharded_trainer(
    config: Config,
    mesh: Mesh,
    *,
    policy_torso: nn.Module | None = None,
    critic_torso: nn.Module | None = None,
) -> Trainer:
    """:func:`npgjax.rl.make_trainer` with its state and batches split over ``mesh``.

    The runner state is constrained as in :func:`shard_trainer`, and the flat batch of
    each update (``[num_steps * num_envs, ...]``) is split over ``"envs"`` too, so the
    policy step and the critic fit run data-parallel: XLA sums the gradients and
    Fisher-vector products over the devices instead of gathering the batch.

    On a ``"tasks"`` mesh it is :func:`npgjax.rl.tasks.make_task_trainer` instead.

    Args:
      config: a :class:`npgjax.rl.Config`.
      mesh: from :func:`make_mesh`.
      policy_torso: optional flax module for the policy (see ``make_trainer``).
      critic_torso: optional flax module for the critic.

    Returns:
      A :class:`~npgjax.rl.Trainer`.

    Examples:
      >>> import jax
      >>> from npgjax.rl import get_config
      >>> from npgjax.rl.sharding import make_mesh, make_sharded_trainer
      >>> mesh = make_mesh(1, "envs")
      >>> trainer = make_sharded_trainer(get_config("CartPole-v1", num_envs=2), mesh)
      >>> trainer.init(jax.random.PRNGKey(0)).obs.shape
      (2, 4)
    """
    if TASK_AXIS in mesh.axis_names:
        return make_task_trainer(config, mesh, policy_torso=policy_torso,
                                 critic_torso=critic_torso)
    shard_batch = None
    if "envs" in mesh.axis_names:
        envs = NamedSharding(mesh, P("envs"))

        def shard_batch(flat: dict[str, Array]) -> dict[str, Array]:
            return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, envs), flat)

    trainer = make_trainer(config, policy_torso=policy_torso, critic_torso=critic_torso,
                           shard_batch=shard_batch)
    return shard_trainer(trainer, mesh)


def make_sharded_train(
    config: Config,
    *,
    devices: Sequence[jax.Device] | int | None = None,
    shard: str = "envs",
    seeds: int = 1,
    seed_devices: int | None = None,
    policy_torso: nn.Module | None = None,
    critic_torso: nn.Module | None = None,
) -> Callable[[Array], tuple[RunnerState, dict[str, Array]]]:
    """``train(keys) -> (final_states, metrics)`` over ``seeds`` keys, sharded over devices.

    Like ``jax.vmap(make_train(config))``, with the environments (``shard="envs"``),
    the seeds (``"seeds"``) or both split over the devices by sharding constraints, or
    each update's policy step and critic fit over two devices (``"tasks"``):
    ``jax.jit`` it (with one process or several). Every leaf of the result carries the
    seed axis first. With environments split, the global batch is still ``num_envs *
    num_steps`` per seed and update, and the metrics match the one-device run to float
    tolerance; the metrics come back replicated on every device.

    Args:
      config: a :class:`npgjax.rl.Config`; ``num_envs`` must divide over the ``"envs"``
        axis.
      devices: devices, a count of ``jax.devices()`` (the first ones), or None for all.
      shard: ``"envs"``, ``"seeds"``, ``"both"`` or ``"tasks"``.
      seeds: the number of keys ``train`` takes; must divide over the ``"seeds"`` axis.
      seed_devices: size of the ``"seeds"`` axis with ``shard="both"``.
      policy_torso: optional flax module for the policy (see ``make_trainer``).
      critic_torso: optional flax module for the critic.

    Returns:
      ``train(keys)`` for keys ``[seeds, 2]``; ``train.mesh`` is its mesh.

    Raises:
      ValueError: from :func:`make_mesh` and :func:`check_divisible`.

    Examples:
      >>> import jax
      >>> from npgjax.rl import get_config
      >>> from npgjax.rl.sharding import make_sharded_train
      >>> cfg = get_config("CartPole-v1", total_timesteps=64, num_envs=2, num_steps=16)
      >>> train = make_sharded_train(cfg, devices=1, seeds=2)
      >>> _, metrics = jax.jit(train)(jax.random.split(jax.random.PRNGKey(0), 2))
      >>> metrics["kl"].shape
      (2, 2)
    """
    mesh = make_mesh(devices, shard, seed_devices=seed_devices)
    check_divisible(config, mesh, seeds)
    trainer = make_sharded_trainer(config, mesh, policy_torso=policy_torso,
                                   critic_torso=critic_torso)
    axis = seed_axis(mesh)
    init = jax.vmap(trainer.init, spmd_axis_name=axis)
    s_state = state_sharding(jax.eval_shape(init, jax.ShapeDtypeStruct((seeds, 2), np.uint32)),
                             mesh, batched=True)
    replicated = NamedSharding(mesh, P())

    def train(keys: Array) -> tuple[RunnerState, dict[str, Array]]:
        keys = jax.lax.with_sharding_constraint(keys, NamedSharding(mesh, P(axis)))
        states = jax.lax.with_sharding_constraint(init(keys), s_state)
        states, metrics = jax.vmap(lambda s: run_updates(trainer, s, 0, config.num_updates),
                                   spmd_axis_name=axis)(states)
        return (jax.lax.with_sharding_constraint(states, s_state),
                jax.lax.with_sharding_constraint(metrics, replicated))

    train.mesh = mesh  # type: ignore[attr-defined]
    return train
