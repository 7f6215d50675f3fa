"""The exported programs' cache: where ``jax.export`` of init and the chunk live, read, written.

Each exported program sits in ``<export_dir>/npgjax-export/``, named by a digest of the
config, the keys' shape, the chunk, the device, npgjax's source and the package versions
(:func:`_fingerprint`); init's beside the chunk's with ``-init`` added. Used by
:mod:`npgjax.cli.compile` (which writes them) and :mod:`npgjax.cli.warm` (which reads
them back by a manifest).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from pathlib import Path
from typing import Any

from npgjax._files import atomic_write

__all__: list[str] = []

_EXPORT_SUBDIR = "npgjax-export"


def _fingerprint() -> str:
    """A digest of npgjax's source and the versions of the packages it traces through:
    any change invalidates every exported program."""
    versions = []
    for name in ("jax", "jaxlib", "flax", "optax", "chex", "gymnax"):
        try:
            versions.append(importlib.metadata.version(name))
        except importlib.metadata.PackageNotFoundError:
            versions.append(None)
    h = hashlib.sha256(repr(versions).encode())
    root = Path(__file__).resolve().parent.parent
    for path in sorted(root.rglob("*.py")):  # any change to npgjax's code invalidates it
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _export_path(export_dir: str, config: Any, keys: Any, chunk: int, mesh: Any = None,
                 vmapped: bool = True) -> Path:
    """Where the exported chunk for this config, device, code and versions lives
    (``vmapped``: whether one seed's chunk keeps the seed axis, ``compile._vmapped``)."""
    import jax

    device = jax.devices()[0]
    h = hashlib.sha256(_fingerprint().encode())
    h.update(repr((config, tuple(keys.shape), str(keys.dtype), chunk,
                   device.platform, device.device_kind, mesh, vmapped)).encode())
    return Path(export_dir) / _EXPORT_SUBDIR / f"{h.hexdigest()[:40]}.jaxexport"


def _read_export_bytes(path: Path | None) -> tuple[Any, bytes]:
    """The ``jax.export`` saved at ``path`` and its bytes; ``(None, b"")`` when absent,
    corrupt or unreadable."""
    from jax import export

    if path is None or not path.exists():
        return None, b""
    try:
        data = path.read_bytes()
        return export.deserialize(bytearray(data)), data
    except Exception:  # corrupt, or flatbuffers missing: export again
        return None, b""


def _read_export(path: Path | None) -> Any:
    """The ``jax.export`` saved at ``path``, or None (absent, corrupt or unreadable)."""
    return _read_export_bytes(path)[0]


def _exported(jitted: Any, leaves: list[Any], path: Path | None) -> tuple[Any, str]:
    """``jax.export`` of a program (init or chunk): read from ``path``, else traced (and
    saved there)."""
    from jax import export

    exp = _read_export(path)
    if exp is not None:
        return exp, "loaded"
    try:
        exp = export.export(jitted)(*leaves)
    except Exception:  # something jax.export does not support: plain jit
        return None, "off"
    if path is None:
        return exp, "traced"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, exp.serialize(), sync=False)
        return exp, "saved"
    except (ImportError, OSError):
        return exp, "traced"


def _init_path(path: Path | None) -> Path | None:
    return None if path is None else path.with_name(f"{path.stem}-init{path.suffix}")
