"""The device mesh of a sharded run, and placing host values on it.

:func:`make_mesh` names the mesh's axes after what is split (``"envs"``, ``"seeds"`` or
both), :func:`check_divisible` checks that a config fits it, and :func:`put_global`
turns values that every process holds into global arrays (one process or several).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

from npgjax.rl.configs import Config

Array = jax.Array
PyTree = Any

__all__ = ["SHARD_MODES", "check_divisible", "make_mesh", "put_global", "seed_axis"]

#: What can be split over devices: the environments, the seeds, both (a 2-D mesh), or
#: the two halves of each update (``"tasks"``: policy step and critic fit, 2 devices).
SHARD_MODES = ("envs", "seeds", "both", "tasks")


def make_mesh(
    devices: Sequence[jax.Device] | int | None = None,
    shard: str = "envs",
    *,
    seed_devices: int | None = None,
) -> Mesh:
    """A mesh with the axes ``shard`` names: ``("envs",)``, ``("seeds",)``, both, or ``("tasks",)``.

    Args:
      devices: the devices, or how many of ``jax.devices()`` to take (the first ones);
        None for all of them.
      shard: ``"envs"``, ``"seeds"``, ``"both"`` or ``"tasks"`` (exactly 2 devices: see
        :mod:`npgjax.rl.tasks`).
      seed_devices: with ``shard="both"``, the size of the ``"seeds"`` axis (default:
        the largest divisor of the device count not above its square root); the
        ``"envs"`` axis takes the rest.

    Returns:
      A :class:`jax.sharding.Mesh` (``Auto`` axes: XLA propagates the shardings).

    Raises:
      ValueError: an unknown ``shard``, more devices than exist, a ``seed_devices``
        that does not divide the device count, or ``"tasks"`` on other than 2 devices.

    Examples:
      >>> from npgjax.rl.mesh import make_mesh
      >>> dict(make_mesh(1).shape)
      {'envs': 1}
    """
    if shard not in SHARD_MODES:
        raise ValueError(f"shard must be one of {SHARD_MODES}, got {shard!r}")
    if devices is None or isinstance(devices, int):
        available = jax.devices()
        n = len(available) if devices is None else devices
        if not 1 <= n <= len(available):
            raise ValueError(f"{n} devices asked for, but only {len(available)} exist "
                             f"({available[0].platform})")
        devices = available[:n]
    n = len(devices)
    if shard == "tasks" and n != 2:
        raise ValueError(f"shard='tasks' runs the policy step and the critic fit side by side "
                         f"on exactly 2 devices; got {n}")
    if shard != "both":
        shape, names = (n,), (shard,)
    else:
        if seed_devices is None:
            seed_devices = max(d for d in range(1, int(n**0.5) + 1) if n % d == 0)
        if seed_devices < 1 or n % seed_devices:
            raise ValueError(f"seed_devices={seed_devices} does not divide {n} devices")
        shape, names = (seed_devices, n // seed_devices), ("seeds", "envs")
    return Mesh(np.asarray(devices, dtype=object).reshape(shape), names,
                axis_types=(AxisType.Auto,) * len(shape))


def check_divisible(config: Config, mesh: Mesh, seeds: int = 1) -> None:
    """Raise a clear ValueError unless ``num_envs`` and ``seeds`` divide over ``mesh``.

    Args:
      config: the training config.
      mesh: from :func:`make_mesh`.
      seeds: the number of seeds (vmapped runs).

    Raises:
      ValueError: naming the axis, its size and the device count.

    Examples:
      >>> from npgjax.rl import get_config
      >>> from npgjax.rl.mesh import check_divisible, make_mesh
      >>> check_divisible(get_config("CartPole-v1", num_envs=8), make_mesh(1))
    """
    size = dict(mesh.shape)
    if config.num_envs % size.get("envs", 1):
        raise ValueError(f"num_envs={config.num_envs} does not divide over "
                         f"{size['envs']} devices: use a multiple of {size['envs']}")
    if seeds % size.get("seeds", 1):
        raise ValueError(f"seeds={seeds} does not divide over {size['seeds']} devices: "
                         f"use a multiple of {size['seeds']}")


def seed_axis(mesh: Mesh) -> str | None:
    """``"seeds"`` when ``mesh`` has that axis, else None (the ``spmd_axis_name`` of vmaps)."""
    return "seeds" if "seeds" in mesh.axis_names else None


def put_global(tree: PyTree, shardings: PyTree) -> PyTree:
    """Host arrays (equal on every process) as global ``jax.Array`` s with ``shardings``.

    Works with one process or several (``jax.distributed``): each process fills in only
    the shards of its own devices, from its full copy of the value.

    Args:
      tree: a pytree of numpy-convertible arrays, the same on every process.
      shardings: a pytree of :class:`jax.sharding.Sharding` (a prefix of ``tree``).

    Returns:
      The pytree of global arrays.
    """
    def put(x: Any, sharding: jax.sharding.Sharding) -> Array:
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(lambda s, sub: jax.tree.map(lambda x: put(x, s), sub),
                        shardings, tree)
