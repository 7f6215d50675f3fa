"""Devices and processes of a run: ``jax.distributed``, the mesh, sharded compilation.

With one device in one process the command line keeps its plain vmapped path; otherwise
the seeds, the environments or both are split over a :mod:`npgjax.rl.sharding` mesh.
With several processes (one per host) each drives its local devices, every process runs
the same program on its part of the mesh, and process 0 writes the outputs.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from typing import Any

import numpy as np

__all__ = ["choose_mesh", "compile_sharded", "host_state", "init_distributed", "is_writer",
           "process_text"]


def init_distributed(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """``jax.distributed.initialize`` when this is one process of several; else host devices.

    Call it before any other JAX call. ``--coordinator``, ``--num-processes`` and
    ``--process-id`` (or ``NPGJAX_COORDINATOR``, ``NPGJAX_NUM_PROCESSES`` and
    ``NPGJAX_PROCESS_ID``) go together; none of them means one process. On CPUs the
    processes exchange data through gloo. In one process, ``--devices N`` (N > 1) or
    ``--shard tasks`` make N (or 2) host devices on a CPU.
    """
    given = (args.coordinator, args.num_processes, args.process_id)
    if args.shard == "tasks" and any(v is not None for v in given):
        parser.error("--shard tasks runs in one process: leave out --coordinator, "
                     "--num-processes and --process-id")
    if all(v is None for v in given):
        _host_devices(2 if args.shard == "tasks" else (args.devices or 1))
        return
    if any(v is None for v in given):
        parser.error("several processes need --coordinator, --num-processes and "
                     "--process-id together (or NPGJAX_COORDINATOR, NPGJAX_NUM_PROCESSES "
                     "and NPGJAX_PROCESS_ID)")
    if not 0 <= args.process_id < args.num_processes:
        parser.error(f"--process-id {args.process_id}: expected 0 to "
                     f"{args.num_processes - 1} for --num-processes {args.num_processes}")
    import jax

    if jax.distributed.is_initialized():  # main() called again in this process
        return
    # Collectives between CPU processes (no effect on GPUs and TPUs).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)


def _host_devices(n: int) -> None:
    """``n`` CPU (host) devices when more than one is asked for (``--devices N``, or 2 for
    ``--shard tasks``), unless the user or XLA_FLAGS chose a count already.

    Host devices share the CPU's cores, but each runs its own program at the same time as
    the others (``benchmarks/host_devices.py``). On a GPU or TPU machine this touches only
    the CPU backend. Only possible before JAX's backends start; afterwards (``main``
    called again in one process) the devices stay as they are and :func:`choose_mesh`
    says if too few exist.
    """
    import os

    import jax

    if (n < 2 or jax.config.jax_num_cpu_devices != -1
            or "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")):
        return
    with contextlib.suppress(RuntimeError):  # backends already initialised
        jax.config.update("jax_num_cpu_devices", n)


def is_writer() -> bool:
    """Whether this process writes files and prints (process 0)."""
    import jax

    return jax.process_index() == 0


def process_text() -> str:
    import jax

    n = jax.process_count()
    return f"{n} process{'es' * (n > 1)}"


def choose_mesh(args: argparse.Namespace, config: Any, parser: argparse.ArgumentParser) -> Any:
    """The mesh for ``--devices``/``--shard``; None for one device in one process.

    Bad requests (more devices than exist, fewer than all with several processes, a
    seed count or ``num_envs`` that does not divide over the devices) exit through
    ``parser.error`` with one line naming the problem.
    """
    import jax

    from npgjax.rl.mesh import check_divisible, make_mesh

    total, procs = jax.device_count(), jax.process_count()
    n = total if args.devices is None else args.devices
    if args.shard == "tasks":  # the policy step and the critic fit: 2 devices
        n = 2 if args.devices is None else args.devices
        if n != 2:
            parser.error(f"--shard tasks: --devices {n}: the policy step and the critic fit "
                         "run side by side on exactly 2 devices")
    if n > total:
        parser.error(f"--devices {n}: only {total} device{'s' * (total > 1)} "
                     f"({jax.devices()[0].platform}) exist here; use --devices {total} "
                     "or fewer")
    if procs > 1 and n != total:
        parser.error(f"--devices {n}: with {procs} processes every device takes part; "
                     f"use --devices {total} (or leave it out)")
    if n == 1 and procs == 1 and args.shard != "tasks":
        return None
    mesh = make_mesh(n, args.shard)
    try:
        check_divisible(config, mesh, args.seeds)
    except ValueError as e:
        parser.error(f"--shard {args.shard}: {e}")
    return mesh


def host_state(state: Any) -> Any:
    """The whole state as numpy on this process (a collective with several processes)."""
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return multihost_utils.process_allgather(state, tiled=True)
    return jax.device_get(state)


def compile_sharded(config: Any, mesh: Any, keys: Any, chunk: int,
                    export_dir: str | None = None, quick_compile: bool = False
                    ) -> tuple[Any, Any, Any, float, float]:
    """Jit ``init`` and a ``chunk``-update scan of ``config``'s trainer, split over ``mesh``.

    Both programs go through ``jax.export`` as in
    :func:`npgjax.cli.compile.compile_training` (saved in ``export_dir`` and read back by
    a warm start), with one process or several (each writes or reads the same program).
    ``quick_compile`` compiles the chunk with ``compiler_options(quick=True)``.

    Returns:
      ``(init(keys), run_chunk(state, start), (keys, state, replicated) shardings,
      tracing seconds, XLA seconds)``; ``init`` and ``run_chunk`` take host values and
      place them on the mesh (with one process or several); metrics come back
      replicated, so every process can read them. ``run_chunk.export`` says what
      happened to the exported chunk (``"loaded"``, ``"saved"``, ``"traced"``,
      ``"off"``).
    """
    import jax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from npgjax.cli.compile import _export_path, _flat_programs, _lower_pair, init_compiler_options
    from npgjax.rl.mesh import put_global, seed_axis
    from npgjax.rl.sharding import make_sharded_trainer, state_sharding
    from npgjax.rl.xla import compiler_options

    t0 = time.perf_counter()
    axis = seed_axis(mesh)
    keys = jax.ShapeDtypeStruct(keys.shape, keys.dtype)
    flat_init, flat_chunk, shapes = _flat_programs(make_sharded_trainer(config, mesh), keys,
                                                  chunk, spmd_axis_name=axis)
    leaves, treedef = jax.tree.flatten(shapes)
    s_state = state_sharding(shapes, mesh, batched=True)
    s_flat = tuple(treedef.flatten_up_to(s_state))
    lead, rep = NamedSharding(mesh, P(axis)), NamedSharding(mesh, P())
    start = jax.ShapeDtypeStruct((), jax.numpy.int32)

    init_kw = {"in_shardings": lead, "out_shardings": s_flat}
    chunk_kw = {"in_shardings": (rep, *s_flat), "out_shardings": (s_flat, rep)}
    path = None if export_dir is None else _export_path(
        export_dir, config, keys, chunk, ("sharded", dict(mesh.shape), jax.process_count()))
    init_l, chunk_l, how = _lower_pair((flat_init, init_kw, [keys]),
                                      (flat_chunk, chunk_kw, [start, *leaves]), path)
    t1 = time.perf_counter()
    # As the one-device path compiles (npgjax.cli.compile.compile_training).
    init_c = init_l.compile(init_compiler_options())
    chunk_c = chunk_l.compile(compiler_options(quick=quick_compile) or None)
    t2 = time.perf_counter()

    def init_fn(k: Any) -> Any:
        return jax.tree.unflatten(treedef, init_c(put_global(k, lead)))

    def chunk_fn(state: Any, first: int) -> Any:
        flat, metrics = chunk_c(put_global(np.int32(first), rep), *jax.tree.leaves(state))
        return jax.tree.unflatten(treedef, flat), metrics

    chunk_fn.export = how  # type: ignore[attr-defined]
    return init_fn, chunk_fn, (lead, s_state, rep), t1 - t0, t2 - t1
