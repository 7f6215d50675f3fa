"""Ahead-of-time compilation of training, with a cache of the traced chunk (``jax.export``)."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from npgjax._gc import paused_gc
from npgjax.cli.exports import _export_path, _exported, _init_path, _read_export

__all__ = ["compile_training", "enable_compile_cache", "no_compile_cache"]

# Compiled (init, chunk) pairs of this process, keyed by (config, seeds, K, ...): repeated
# main() calls in one process (tests, notebooks) reuse them instead of compiling again.
_COMPILED: dict[tuple[Any, ...], tuple[Any, Any, float, float]] = {}
_COMPILED_MAX = 4

def enable_compile_cache() -> str:
    """Turn on JAX's persistent compilation cache; returns its directory."""
    import jax

    path = os.path.expanduser(
        os.environ.get("NPGJAX_CACHE_DIR", os.path.join("~", ".cache", "npgjax", "jax"))
    )
    for name, value in (
        ("jax_compilation_cache_dir", path),
        ("jax_persistent_cache_min_compile_time_secs", 0),
        ("jax_persistent_cache_min_entry_size_bytes", 0),
    ):
        with contextlib.suppress(AttributeError, KeyError, ValueError, TypeError):
            jax.config.update(name, value)
    return path


@contextlib.contextmanager
def no_compile_cache() -> Iterator[None]:
    """JAX's persistent compilation cache off inside, also one that
    ``$JAX_COMPILATION_CACHE_DIR`` names; the previous setting is restored on exit.

    JAX decides whether a process uses the cache at its first compilation, so this takes
    full effect in a process that has compiled nothing yet (``npgjax-train``).
    """
    import jax

    before = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    try:
        yield
    finally:
        jax.config.update("jax_enable_compilation_cache", before)


_INIT_CPU_OPTIONS = {"xla_backend_optimization_level": 0,
                     "xla_cpu_use_fusion_emitters": False}


def init_compiler_options(backend: str | None = None) -> dict[str, Any] | None:
    """XLA options for init, which runs once (here, in cli/devices.py and cli/warm.py).

    On the CPU: no LLVM optimisation and XLA's older loop emitters (init is also
    lowered with threefry's loops, :func:`_lowered_init`). On a 2-core AMD EPYC its XLA
    time, beside the chunk's compilation, went from about 1.0 to 0.55 s, the same bits
    (session 25). Elsewhere XLA's defaults, as :func:`npgjax.rl.compiler_options`: not
    measured there. (The literal options, not built from ``compiler_options``: importing
    ``npgjax.rl`` would cost the warm start, which uses this too.)

    Args:
      backend: ``"cpu"``, ``"gpu"``, ``"tpu"``, or None for ``jax.default_backend()``.

    Returns:
      The options for ``Lowered.compile``, or None (XLA's defaults).

    Examples:
      >>> from npgjax.cli.compile import init_compiler_options
      >>> init_compiler_options("cpu")
      {'xla_backend_optimization_level': 0, 'xla_cpu_use_fusion_emitters': False}
      >>> init_compiler_options("gpu") is None
      True
    """
    import jax

    cpu = (jax.default_backend() if backend is None else backend) == "cpu"
    return dict(_INIT_CPU_OPTIONS) if cpu else None


def _lowered(fn: Any, kw: dict, args: list[Any], path: Path | None, *,
             unroll: bool = True) -> tuple[Any, str]:
    """``fn`` lowered through ``jax.export`` (:func:`_exported`), or directly when that
    fails; with what happened to the export. With ``unroll`` threefry is lowered unrolled
    (:func:`npgjax.rl.xla.unrolled_threefry`: the same bits, a faster rollout, a bigger
    program: init, which runs once, keeps JAX's loops)."""
    import jax

    from npgjax.rl.xla import unrolled_threefry

    with unrolled_threefry() if unroll else contextlib.nullcontext():
        exp, how = _exported(jax.jit(fn, **kw), args, path)
        return jax.jit(exp.call if exp is not None else fn, **kw).lower(*args), how


def _lowered_init(fn: Any, kw: dict, args: list[Any], chunk_path: Path | None) -> Any:
    """Init lowered as :func:`_lowered` does, beside the chunk's export (``-init``), with
    threefry's loops: it runs once, so the smaller program wins."""
    return _lowered(fn, kw, args, _init_path(chunk_path), unroll=False)[0]


def _lower_pair(init: tuple[Any, dict, list], chunk: tuple[Any, dict, list],
                path: Path | None) -> tuple[Any, Any, str]:
    """Lower ``init`` and the chunk, each ``(flat function, jit keywords, arguments)``.

    Both go through ``jax.export`` (:func:`_exported`; the chunk at ``path``, the
    init there with ``-init`` added to the stem), so a warm start lowers neither.

    Returns:
      ``(init lowered, chunk lowered, what happened to the exported chunk)``.
    """
    init_l = _lowered_init(*init, path)
    chunk_l, how = _lowered(*chunk, path)
    return init_l, chunk_l, how


def _vmapped(keys: Any, options: dict[str, Any]) -> bool:
    """Whether the chunk is vmapped over seeds: always, but for one seed compiled without
    XLA's older loop emitters (``compiler_options(quick=True)``).

    One seed then runs ``run_updates`` itself, without vmap's axis of size 1: on a 2-core
    AMD EPYC 0.69-0.97x the time per update on classic-control and bsuite tasks (about
    the same on MinAtar) and 0.80-1.00x the XLA time (``benchmarks/quick_compile.py
    --vmap``). Under the older loop emitters that program runs slower than the vmapped
    one, so the quick compile keeps the axis. Other kernels round differently: one
    seed's run can differ from the same seed run among others.
    """
    return int(keys.shape[0]) != 1 or options.get("xla_cpu_use_fusion_emitters") is False


def _flat_programs(trainer: Any, keys: Any, chunk: int, *, vmapped: bool = True,
                   **vmap_kw: Any) -> tuple[Any, Any, Any]:
    """``init`` and a ``chunk``-update scan of ``trainer``, vmapped over seeds, on flat
    states (lists of leaves: what ``jax.export`` serialises).

    Args:
      trainer: from :func:`npgjax.rl.make_trainer` (or a sharded one).
      keys: PRNG keys ``[seeds, 2]`` (arrays or ``ShapeDtypeStruct``).
      chunk: updates per call of the chunk.
      vmapped: False for one seed: the chunk then runs on the state without its seed
        axis and puts the axis back (:func:`_vmapped`); it takes and returns the same.
      **vmap_kw: for ``jax.vmap`` over seeds (e.g. ``spmd_axis_name``).

    Returns:
      ``(flat_init(keys) -> leaves, flat_chunk(start, *leaves) -> (leaves, metrics),
      the state's shapes)``, the shapes from an abstract trace of ``init``.
    """
    import jax

    from npgjax.rl.trainer import run_updates

    if not vmapped and int(keys.shape[0]) != 1:
        raise ValueError(f"vmapped=False needs one seed, got keys of shape {keys.shape}")
    init = jax.vmap(trainer.init, **vmap_kw)
    shapes = jax.eval_shape(init, keys)
    treedef = jax.tree.structure(shapes)

    def flat_init(k: Any) -> Any:
        return tuple(jax.tree.leaves(init(k)))

    def flat_chunk(start: Any, *flat: Any) -> Any:
        state = jax.tree.unflatten(treedef, flat)
        if vmapped:
            state, metrics = jax.vmap(lambda s: run_updates(trainer, s, start, chunk),
                                      **vmap_kw)(state)
        else:
            one = jax.tree.map(lambda x: x[0], state)
            state, metrics = jax.tree.map(lambda x: x[None],
                                          run_updates(trainer, one, start, chunk))
        return tuple(jax.tree.leaves(state)), metrics

    return flat_init, flat_chunk, shapes


def _compile_flat(trainer: Any, keys: Any, chunk: int, jit_kw: dict, path: Path | None,
                  options: dict[str, Any]) -> tuple[Any, Any, Any, str, float]:
    """Compile the flat init and chunk of :func:`_flat_programs`, both through
    ``jax.export`` (at ``path``, when given).

    The chunk is compiled (or, on a warm start, its executable read from JAX's cache)
    in a thread while init is traced and compiled here: XLA releases the GIL. Init runs
    once, so it is compiled cheaply (:func:`init_compiler_options`); the chunk with ``options``
    (:func:`npgjax.rl.compiler_options`; CPU: LLVM O1, about 0.6x O3's compile time).
    Python's collector is paused meanwhile (:mod:`npgjax._gc`).

    Returns:
      ``(init executable, chunk executable, the state's treedef, what happened to the
      exported chunk, time.perf_counter() when both were lowered)``.
    """
    import jax

    start_info = jax.ShapeDtypeStruct((), jax.numpy.int32)
    with paused_gc(), concurrent.futures.ThreadPoolExecutor(1) as pool:
        exp, how, chunk_future = _read_export(path), "loaded", None
        if exp is not None:  # warm start: no need to wait for init's abstract trace
            avals = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in exp.in_avals]
            lowered = jax.jit(exp.call, **jit_kw).lower(*avals)
            chunk_future = pool.submit(lowered.compile, options or None)
        flat_init, flat_chunk, shapes = _flat_programs(trainer, keys, chunk,
                                                       vmapped=_vmapped(keys, options))
        leaves, treedef = jax.tree.flatten(shapes)
        args = [start_info, *leaves]
        if exp is not None and [(a.shape, a.dtype) for a in args] != [
                (a.shape, a.dtype) for a in avals]:  # stale: export it again
            chunk_future.cancel()
            path.unlink(missing_ok=True)
            chunk_future = None
        if chunk_future is None:
            lowered, how = _lowered(flat_chunk, jit_kw, args, path)
            chunk_future = pool.submit(lowered.compile, options or None)
        init_lowered = _lowered_init(flat_init, jit_kw, [keys], path)
        t_lowered = time.perf_counter()
        init_c = init_lowered.compile(init_compiler_options())
        return init_c, chunk_future.result(), treedef, how, t_lowered


def compile_training(
    trainer: Any, keys: Any, chunk: int, export_dir: str | None = None, mesh: Any = None,
    request: Any = None, quick_compile: bool = False,
) -> tuple[Any, Any, float, float, bool]:
    """Compile ``vmap(trainer.init)`` and a ``chunk``-update ``lax.scan``, ahead of time.

    This is how the command line compiles. Both programs go through ``jax.export``; with
    ``export_dir`` the exported programs are saved there and read back by later processes
    with the same config, seed count, chunk, device, package versions and npgjax source,
    which then skip lowering them (the chunk about 1 s, init about 0.3 s of a warm start;
    an abstract trace of init, about 0.1 s, still gives the state's structure). Both programs
    are then compiled, the chunk in a thread as soon as it is lowered (on a warm start,
    as soon as its export is read) while init is traced and compiled (:func:`_compile_flat`),
    ``init`` cheaply (it runs once: :func:`init_compiler_options`), the chunk with
    :func:`npgjax.rl.compiler_options` (``quick=quick_compile``). One seed's chunk runs
    without vmap's seed axis unless ``quick_compile`` (:func:`_vmapped`). Results are
    memoised in this process per ``(config, seeds, chunk, devices, quick_compile)``.

    Args:
      trainer: from :func:`npgjax.rl.make_trainer`.
      keys: PRNG keys ``[seeds, 2]``; the executables take keys (init) and states (chunk)
        batched over seeds.
      chunk: updates per call of the chunk.
      export_dir: directory for exported chunks (the CLI uses its compilation-cache
        directory), or None to keep them in memory only.
      mesh: for a trainer whose update runs on a mesh with everything replicated
        (:func:`npgjax.rl.tasks.make_task_trainer`): both programs then take and
        return values replicated over it.
      request: what decided the config and the chunk (e.g. the command line's options):
        with ``export_dir``, a manifest under it lets :func:`npgjax.cli.warm.load_training`
        read the programs back without the trainer.
      quick_compile: compile the chunk with ``compiler_options(quick=True)`` (CPU: about
        0.5-0.8x the XLA time; about as fast for one small seed, slower vmapped over seeds).

    Returns:
      ``(init, run_chunk, tracing seconds, XLA seconds, memoised)``: ``init(keys) ->
      state`` and ``run_chunk(state, start) -> (state, metrics)``, ``start`` being the
      index of the chunk's first update (it decides where the evaluation runs). The
      tracing seconds run until both programs are lowered, the XLA seconds are the wait
      for XLA after that (reading JAX's persistent compilation cache when it is on);
      ``run_chunk.export`` says whether the exported chunk was ``"loaded"``,
      ``"saved"``, ``"traced"`` (not saved) or ``"off"`` (jax.export failed; plain jit).
    """
    import jax

    config = trainer.config
    from npgjax.rl.xla import compiler_options

    options = compiler_options(quick=quick_compile)
    memo_key = (config, int(keys.shape[0]), chunk, None if mesh is None else mesh.size,
                quick_compile)
    if memo_key in _COMPILED:
        init_c, chunk_c, _, _ = _COMPILED[memo_key]
        return init_c, chunk_c, 0.0, 0.0, True

    jit_kw: dict[str, Any] = {}
    if mesh is not None:
        replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        jit_kw = {"in_shardings": replicated, "out_shardings": replicated}
    t0 = time.perf_counter()
    path = None if export_dir is None else _export_path(
        export_dir, config, keys, chunk, None if mesh is None else dict(mesh.shape),
        vmapped=_vmapped(keys, options))
    flat_init_c, flat_c, treedef, how, t1 = _compile_flat(trainer, keys, chunk, jit_kw, path,
                                                          options)
    t2 = time.perf_counter()

    def init_c(k: Any) -> Any:
        return jax.tree.unflatten(treedef, flat_init_c(k))

    def chunk_c(state: Any, start: int) -> Any:
        # A numpy scalar: jnp.int32 would dispatch a small jitted program (about 30 ms
        # the first time in a process).
        flat, metrics = flat_c(np.int32(start), *jax.tree.leaves(state))
        return jax.tree.unflatten(treedef, flat), metrics

    chunk_c.export = how  # type: ignore[attr-defined]
    if request is not None and path is not None and how in ("loaded", "saved"):
        from npgjax.cli.warm import save_manifest

        save_manifest(export_dir, request, keys, path, config, chunk, mesh, options)
    while len(_COMPILED) >= _COMPILED_MAX:
        _COMPILED.pop(next(iter(_COMPILED)))
    _COMPILED[memo_key] = (init_c, chunk_c, t1 - t0, t2 - t1)
    return init_c, chunk_c, t1 - t0, t2 - t1, False


