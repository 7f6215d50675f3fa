"""Task parallelism: the policy step and the critic fit of each update on two devices at once.

The two halves of an update after the rollout are independent: the policy step reads the
advantages, the critic fit the value targets, and neither needs the other's result. XLA
runs them one after the other in one program (measured: independent loops in one
``jax.jit`` on a CPU take the sum of their times). With ``shard="tasks"`` the update
runs under :func:`jax.shard_map` on a mesh of two devices with everything replicated:
both devices run the rollout, device 0 then runs the policy step and device 1 the
critic fit (a ``lax.cond`` on the device index), and one ``psum`` of the two results,
packed into a single vector of 32-bit words, gives every device both. Adding zeros to
integer words is exact, so the exchange itself changes no bit.

On a CPU make two host devices first (``jax.config.update("jax_num_cpu_devices", 2)``
before JAX's first use; the command line does this for ``--shard tasks``). With the
RL-zoo TRPO settings on CartPole-v1 (2 environments x 512 steps, 20 critic passes, 15
CG iterations), one seed trained at 67,000 env steps/s instead of 36,900 on a 2-core
AMD EPYC (1.82x; 1.93x in another run; ``benchmarks/host_devices.py``). It pays when
one seed's update is small and its two halves cost about the same; with 8 or 16 seeds,
splitting the seeds over the two devices (``shard="seeds"``, 1.43-1.50x) beat it
(1.14-1.35x). The results equal the plain trainer's up to floating-point rounding (the
program is fused differently), as with any other compile: the first two updates of
that run agree bit for bit, later ones by rounding.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.extend
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from npgjax.rl.configs import Config
from npgjax.rl.state import RunnerState, Trainer
from npgjax.rl.trainer import make_trainer

Array = jax.Array
PyTree = Any

__all__ = ["TASK_AXIS", "make_task_trainer", "swap_results", "task_pair"]

#: The mesh axis of task parallelism (two devices).
TASK_AXIS = "tasks"


def _to_words(x: Array) -> Array:
    x = jnp.asarray(x)
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32).ravel()
    if x.dtype.itemsize >= 4:  # 8-byte types become pairs of words
        return jax.lax.bitcast_convert_type(x, jnp.uint32).ravel()
    small = jnp.uint8 if x.dtype.itemsize == 1 else jnp.uint16
    return jax.lax.bitcast_convert_type(x, small).astype(jnp.uint32).ravel()


def _from_words(words: Array, like: jax.ShapeDtypeStruct) -> Array:
    if like.dtype == jnp.bool_:
        return words.astype(jnp.bool_).reshape(like.shape)
    if like.dtype.itemsize > 4:
        words = words.reshape((*like.shape, like.dtype.itemsize // 4))
        return jax.lax.bitcast_convert_type(words, like.dtype)
    if like.dtype.itemsize == 4:
        return jax.lax.bitcast_convert_type(words.reshape(like.shape), like.dtype)
    small = jnp.uint8 if like.dtype.itemsize == 1 else jnp.uint16
    return jax.lax.bitcast_convert_type(words.astype(small), like.dtype).reshape(like.shape)


def swap_results(tree: PyTree, axis: str = TASK_AXIS) -> PyTree:
    """The sum over ``axis`` of a pytree that each device holds a disjoint part of.

    Every leaf is reinterpreted as 32-bit words, concatenated, and the vector goes
    through one ``psum``: where one device holds a value and the others zeros, every
    device gets the value bit for bit (integer addition: NaN payloads and the sign of
    zero survive, which a float sum would not promise), whatever the dtype. One
    collective of one operand: a ``psum`` of the leaves as they are (one all-reduce of
    ~55 operands for the zoo TRPO update) ran 2.6 ms per update slower on a 2-core CPU,
    one all-gather per leaf slower still.

    Args:
      tree: a pytree of arrays (bool, 8-, 16-, 32- or 64-bit).
      axis: the mesh axis to sum over (inside ``shard_map``).

    Returns:
      A pytree like ``tree``.
    """
    leaves, treedef = jax.tree.flatten(tree)
    if not leaves:
        return tree
    words = [_to_words(x) for x in leaves]
    total = jax.lax.psum(jnp.concatenate(words), axis)
    out, at = [], 0
    for x, w in zip(leaves, words, strict=True):
        out.append(_from_words(total[at:at + w.size], jax.ShapeDtypeStruct(x.shape, x.dtype)))
        at += w.size
    return jax.tree.unflatten(treedef, out)


def _traced(thunk: Callable[[], Any]) -> tuple[Callable[[], Any], Any]:
    closed, out = jax.make_jaxpr(thunk, return_shape=True)()
    run = jax.extend.core.jaxpr_as_fun(closed)
    return (lambda: jax.tree.unflatten(jax.tree.structure(out), run())), out


def _zeros(shapes: Any) -> Any:
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def task_pair(axis: str = TASK_AXIS) -> Callable[..., tuple[Any, Any]]:
    """``run_pair(first, second)``: ``first()`` on device 0 and ``second()`` on device 1.

    For :func:`npgjax.rl.make_trainer`'s ``run_pair`` inside ``shard_map`` over a
    two-device ``axis``: each device runs one thunk (a ``lax.cond`` on its index) and
    zeros for the other's result, then :func:`swap_results` gives both devices both.
    """

    def run_pair(first: Callable[[], Any], second: Callable[[], Any]) -> tuple[Any, Any]:
        # Each half traced once: its jaxpr runs in one branch, its shapes give the zeros.
        (f, f_out), (g, g_out) = (_traced(first), _traced(second))
        on_first = jax.lax.axis_index(axis) == 0
        pair = jax.lax.cond(on_first, lambda: (f(), _zeros(g_out)), lambda: (_zeros(f_out), g()))
        return swap_results(pair, axis)

    return run_pair


def make_task_trainer(
    config: Config,
    mesh: Mesh,
    *,
    policy_torso: nn.Module | None = None,
    critic_torso: nn.Module | None = None,
) -> Trainer:
    """:func:`npgjax.rl.make_trainer` whose updates split their work over two devices.

    ``update`` runs under ``shard_map`` on ``mesh`` (axis ``"tasks"``, two devices),
    with the state replicated: the rollout on both, the policy step on the first, the
    critic fit on the second, the results exchanged (see the module docstring). ``init``
    and ``evaluate`` are the plain trainer's (they run replicated under ``jax.jit``).

    Args:
      config: a :class:`npgjax.rl.Config`.
      mesh: a mesh with one axis ``"tasks"`` of two devices (``make_mesh(2, "tasks")``).
      policy_torso: optional flax module for the policy (see ``make_trainer``).
      critic_torso: optional flax module for the critic.

    Returns:
      A :class:`~npgjax.rl.Trainer`.

    Examples:
      >>> import jax
      >>> from npgjax.rl import get_config, make_mesh
      >>> from npgjax.rl.tasks import make_task_trainer
      >>> if jax.device_count() >= 2:  # e.g. jax_num_cpu_devices=2 set at start-up
      ...     trainer = make_task_trainer(get_config("CartPole-v1"), make_mesh(2, "tasks"))
    """
    if tuple(mesh.axis_names) != (TASK_AXIS,) or mesh.size != 2:
        raise ValueError(f"make_task_trainer needs a mesh with one axis {TASK_AXIS!r} of 2 "
                         f"devices (make_mesh(2, 'tasks')); got axes "
                         f"{dict(mesh.shape)}.")
    trainer = make_trainer(config, policy_torso=policy_torso, critic_torso=critic_torso,
                           run_pair=task_pair(TASK_AXIS))
    split = jax.shard_map(trainer.update, mesh=mesh, in_specs=P(), out_specs=P())

    def update(state: RunnerState) -> tuple[RunnerState, dict[str, Array]]:
        return split(state)

    return trainer._replace(update=update)
