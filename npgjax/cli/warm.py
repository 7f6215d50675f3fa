"""Warm starts without the trainer: an earlier run's exported programs, found by the request.

:func:`npgjax.cli.compile.compile_training` saves the traced ``init`` and chunk
(``jax.export``) under the compilation-cache directory, keyed by the config. Finding
them that way needs the config, and so the RL layer (flax, gymnax) and the trainer:
about 0.6 s of a 1.6 s warm start on a 2-core CPU. Given a ``request`` (anything that,
with npgjax's source and the package versions, decides the config and the chunk: the
arguments of :func:`npgjax.rl.get_config` and the asked-for chunk size),
``compile_training`` also writes a small JSON manifest keyed by that request, and
:func:`load_training` reads it back after importing only jax (``import npgjax`` is lazy): it
lowers the two exported programs and has XLA read their executables from the cache in
threads (:func:`prefetch_training`: the command line builds its config meanwhile).

The programs work on the flat state (a tuple of arrays, the leaves of the trainer's
state): without the trainer there is no tree structure. Anything else that needs the
config (a checkpoint, the evaluation of a saved policy) still builds it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from npgjax._files import atomic_write
from npgjax._gc import paused_gc
from npgjax.cli.exports import (
    _EXPORT_SUBDIR,
    _fingerprint,
    _init_path,
    _read_export,
    _read_export_bytes,
)

with paused_gc():  # the only heavy import of a warm start, about 20% faster so
    import jax

__all__ = ["WarmTraining", "load_training", "prefetch_training", "save_manifest", "with_tree"]

_FORMAT = 1
_FIELDS = {"export", "chunk", "num_updates", "batch_size", "mesh", "options", "config"}


class WarmTraining(NamedTuple):
    """Compiled programs read back by :func:`load_training`.

    Attributes:
      init: ``init(keys) -> state``, ``keys`` of shape ``[seeds, 2]``; the state is the
        tuple of the trainer's state leaves, batched over seeds.
      run_chunk: ``run_chunk(state, start) -> (state, metrics)``, ``start`` the index of
        the chunk's first update; metrics ``[seeds, chunk]`` per name.
      chunk: updates per call of ``run_chunk``.
      num_updates: updates of the whole run (``config.num_updates``).
      batch_size: env steps per update (``config.batch_size``).
      config: the config's ``repr`` (for a record; not parsed).
      lower_seconds: from the call until both programs were lowered.
      seconds: from the call until both were compiled (read from the cache).
    """

    init: Any
    run_chunk: Any
    chunk: int
    num_updates: int
    batch_size: int
    config: str
    lower_seconds: float
    seconds: float


def _manifest_path(export_dir: str, request: Any, keys: Any) -> Path:
    """Where the manifest of ``request`` lives: keyed by the request, the keys' shape,
    npgjax's source and versions, the devices and the JAX flags that change a trace."""
    device = jax.devices()[0]
    flags = tuple(getattr(jax.config, f, None) for f in (
        "jax_enable_x64", "jax_default_prng_impl", "jax_threefry_partitionable"))
    h = hashlib.sha256(_fingerprint().encode())
    h.update(repr((json.dumps(request, sort_keys=True, default=repr), tuple(keys.shape),
                   str(keys.dtype), device.platform, device.device_kind,
                   jax.device_count(), jax.process_count(), flags)).encode())
    return Path(export_dir) / _EXPORT_SUBDIR / f"{h.hexdigest()[:40]}.warm.json"


def save_manifest(export_dir: str, request: Any, keys: Any, export: Path, config: Any,
                  chunk: int, mesh: Any, options: dict[str, Any]) -> None:
    """Write the manifest that lets :func:`load_training` find ``export`` by ``request``.

    Args:
      export_dir: the directory of the exported programs.
      request: what decides the config and the chunk (JSON-able, or keyed by ``repr``).
      keys: the PRNG keys (or their ``ShapeDtypeStruct``) the programs were traced for.
      export: the exported chunk's path (its init beside it).
      config: the run's config (``num_updates``, ``batch_size``).
      chunk: updates per chunk.
      mesh: the mesh of a replicated run (``--shard tasks``), or None.
      options: the XLA options the chunk was compiled with (part of XLA's cache key).

    Returns:
      None; a cache that cannot be written gives no warm start, and no error.

    Examples:
      >>> import tempfile, types
      >>> from pathlib import Path
      >>> import jax
      >>> from npgjax.cli.warm import load_training, save_manifest
      >>> d, keys = tempfile.mkdtemp(), jax.random.PRNGKey(0)[None]
      >>> (Path(d) / "npgjax-export").mkdir()
      >>> cfg = types.SimpleNamespace(num_updates=4, batch_size=16)
      >>> save_manifest(d, {"env": "CartPole-v1"}, keys, Path(d) / "x.jaxexport", cfg, 2,
      ...               None, {})
      >>> load_training(d, {"env": "CartPole-v1"}, keys) is None  # found, export absent
      True
    """
    manifest = {
        "format": _FORMAT, "export": export.name, "chunk": int(chunk),
        "num_updates": int(config.num_updates), "batch_size": int(config.batch_size),
        "mesh": None if mesh is None else {str(k): int(v) for k, v in mesh.shape.items()},
        "options": options, "config": repr(config),
    }
    with contextlib.suppress(OSError):  # a read-only cache: no warm start, nothing lost
        atomic_write(_manifest_path(export_dir, request, keys), json.dumps(manifest).encode(),
                     sync=False)


def _read_manifest(export_dir: str, request: Any, keys: Any) -> dict[str, Any] | None:
    try:
        m = json.loads(_manifest_path(export_dir, request, keys).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(m, dict) or m.get("format") != _FORMAT or not set(m) >= _FIELDS:
        return None
    return m


def load_training(export_dir: str | None, request: Any, keys: Any) -> WarmTraining | None:
    """The programs that an earlier :func:`~npgjax.cli.compile.compile_training` with the
    same ``request`` saved, compiled again from JAX's persistent cache; None when there
    are none (then build the trainer and compile as usual).

    Only jax is imported (no RL layer, no optax). This is :func:`prefetch_training`
    waited for: call that instead to do other work while XLA reads the executables.

    Args:
      export_dir: the directory ``compile_training`` saved to, or None (returns None).
      request: as given to ``compile_training``.
      keys: PRNG keys ``[seeds, 2]`` (or their ``ShapeDtypeStruct``).

    Returns:
      A :class:`WarmTraining`, or None (no manifest, a missing or unreadable export,
      or programs that do not take these keys).

    Examples:
      >>> import jax
      >>> from npgjax.cli.warm import load_training
      >>> keys = jax.random.PRNGKey(0)[None]
      >>> load_training(None, {"env": "CartPole-v1"}, keys) is None
      True
    """
    future = prefetch_training(export_dir, request, keys)
    return None if future is None else future.result()


def prefetch_training(export_dir: str | None, request: Any, keys: Any
                      ) -> concurrent.futures.Future[WarmTraining] | None:
    """Start :func:`load_training`: lower both programs here, and return while XLA reads
    their executables from the cache in threads (it releases the GIL).

    The chunk is lowered first, so that its read (the longer one) starts soonest. Call
    this after JAX's cache is on (:func:`~npgjax.cli.compile.enable_compile_cache`) and
    after choosing the host device count: both are part of the key.

    Args:
      export_dir: the directory ``compile_training`` saved to, or None (returns None).
      request: as given to ``compile_training``.
      keys: PRNG keys ``[seeds, 2]`` (or their ``ShapeDtypeStruct``).

    Returns:
      A future of the :class:`WarmTraining`, or None when there is nothing to read (as
      :func:`load_training`).

    Examples:
      >>> import jax
      >>> from npgjax.cli.warm import prefetch_training
      >>> keys = jax.eval_shape(lambda: jax.random.PRNGKey(0)[None])  # shapes suffice
      >>> prefetch_training(None, {"env": "CartPole-v1"}, keys) is None
      True
    """
    if export_dir is None:
        return None
    t0 = time.perf_counter()
    m = _read_manifest(export_dir, request, keys)
    if m is None:
        return None
    path = Path(export_dir) / _EXPORT_SUBDIR / m["export"]
    with paused_gc():
        chunk_exp, chunk_bytes = _read_export_bytes(path)
        init_exp = _read_export(_init_path(path))
        if chunk_exp is None or init_exp is None or not _takes(init_exp, keys):
            return None
        pool = concurrent.futures.ThreadPoolExecutor(3, thread_name_prefix="npgjax-warm")
        with _lapack_setup_deferred(chunk_bytes):  # the chunk's XLA read starts sooner
            chunk_l = _lower(chunk_exp, m["mesh"], chunk_exp.in_avals)
        chunk_f = pool.submit(chunk_l.compile, m["options"] or None)
        from npgjax.cli.compile import init_compiler_options

        init_f = pool.submit(_lower(init_exp, m["mesh"], [keys]).compile,
                             init_compiler_options())
    lower_s = time.perf_counter() - t0

    def finish() -> WarmTraining:
        init_c, chunk_c = init_f.result(), chunk_f.result()

        def run_chunk(state: Any, start: int) -> Any:
            return chunk_c(np.int32(start), *state)  # no jitted conversion (compile.py)

        return WarmTraining(init_c, run_chunk, m["chunk"], m["num_updates"],
                            m["batch_size"], m["config"], lower_s,
                            time.perf_counter() - t0)

    done = pool.submit(finish)
    pool.shutdown(wait=False)
    return done


@contextlib.contextmanager
def _lapack_setup_deferred(serialized: bytes) -> Iterator[None]:
    """Inside, lowering an exported program does not set up LAPACK, when the program
    calls none (no ``lapack`` in its serialised module).

    JAX sets up LAPACK whenever it lowers an exported CPU program, and that imports
    ``scipy.linalg``: 0.13 s of the 1.3 s warm start of ``--shard tasks`` on a 2-core
    AMD EPYC, spent before the chunk's executable can be read from the cache. The
    chunk calls no LAPACK; ``init`` (orthogonal initialisers: QR) does, and sets it up
    when it is lowered next, while XLA reads the chunk. This swaps a private function of
    ``jax._src.export._export`` and restores it on exit; where it is not found it does
    nothing. Delete it when JAX sets up LAPACK only for programs that call it
    (``tests/test_warm.py`` checks that it still imports scipy otherwise).
    """
    try:
        from jax._src.export import _export
    except ImportError:
        _export = None
    real = getattr(_export, "_ensure_backends_initialized", None)
    if real is None or b"lapack" in serialized:
        yield
        return
    _export._ensure_backends_initialized = lambda platforms: None
    try:
        yield
    finally:
        _export._ensure_backends_initialized = real


def _takes(exp: Any, keys: Any) -> bool:
    (aval,) = exp.in_avals
    return tuple(aval.shape) == tuple(keys.shape) and aval.dtype == keys.dtype


def _lower(exp: Any, mesh: dict[str, int] | None, args: Any) -> Any:
    """``exp.call`` lowered as ``compile_training`` lowers it (the same XLA cache key):
    on one device, or replicated over a mesh of the manifest's shape."""

    kw: dict[str, Any] = {}
    if mesh is not None:
        devices = np.array(jax.devices()[:int(np.prod(list(mesh.values())))])
        m = jax.sharding.Mesh(devices.reshape(tuple(mesh.values())), tuple(mesh),
                              axis_types=(jax.sharding.AxisType.Auto,) * len(mesh))
        rep = jax.sharding.NamedSharding(m, jax.sharding.PartitionSpec())
        kw = {"in_shardings": rep, "out_shardings": rep}
    avals = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in args]
    return jax.jit(exp.call, **kw).lower(*avals)


def with_tree(prefetched: Any, trainer: Any, keys: Any) -> tuple[Any, ...] | None:
    """:func:`~npgjax.cli.compile.compile_training`'s results from a
    :func:`prefetch_training` future, the state's tree structure taken from an abstract
    trace of ``trainer.init`` (about 0.1 s); None when there are none (``prefetched``
    None, or XLA failed to read them) or they are not ``trainer.config``'s.

    Args:
      prefetched: from :func:`prefetch_training`, or None.
      trainer: from :func:`npgjax.rl.make_trainer` (or a task trainer) for the config
        that the programs should be of.
      keys: the PRNG keys ``[seeds, 2]`` (or their ``ShapeDtypeStruct``).

    Returns:
      ``(init, run_chunk, lowering seconds, seconds waited here, False)``, as
      ``compile_training`` returns them (``run_chunk.export`` is ``"warm"``); or None.

    Examples:
      >>> import jax
      >>> from npgjax.cli.warm import with_tree
      >>> from npgjax.rl import get_config, make_trainer
      >>> trainer = make_trainer(get_config("CartPole-v1", num_envs=2, num_steps=8))
      >>> with_tree(None, trainer, jax.random.PRNGKey(0)[None]) is None  # compile instead
      True
    """
    t0 = time.perf_counter()
    try:
        warm = None if prefetched is None else prefetched.result()
    except Exception:  # XLA failed to read them: compile as usual
        warm = None
    if warm is None or warm.config != repr(trainer.config):
        return None
    treedef = jax.tree.structure(jax.eval_shape(jax.vmap(trainer.init), keys))

    def init_fn(k: Any) -> Any:
        return jax.tree.unflatten(treedef, warm.init(k))

    def chunk_fn(state: Any, start: int) -> Any:
        flat, metrics = warm.run_chunk(tuple(jax.tree.leaves(state)), start)
        return jax.tree.unflatten(treedef, flat), metrics

    chunk_fn.export = "warm"  # type: ignore[attr-defined]
    return init_fn, chunk_fn, warm.lower_seconds, time.perf_counter() - t0, False
