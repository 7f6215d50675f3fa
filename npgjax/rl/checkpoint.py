"""Checkpoints without pickle: the state as msgpack, the metadata as JSON.

A checkpoint is two files in a run directory: ``checkpoint.msgpack`` (the training
state of every seed, written by :func:`flax.serialization.msgpack_serialize`, and any
extra arrays such as the metrics) and ``checkpoint.json`` (the format version, the
npgjax version, the config with the environment's id, kwargs and params, and the
SHA-256 of the msgpack file). Nothing in them runs code when read. A state is restored
into a target pytree built from the config (``jax.eval_shape`` of the trainer's init),
and every leaf's shape and dtype is checked, so a file of another config, a missing key
or a wrong-shaped leaf is a clear error, never an XLA type mismatch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from npgjax._files import atomic_write

__all__ = ["FORMAT_VERSION", "CheckpointError", "config_dict", "config_from_dict",
           "read_checkpoint", "read_metadata", "restore", "write_checkpoint"]

#: Version of the checkpoint format written here (1 was the pickle of npgjax <= 0.1).
FORMAT_VERSION = 2
FORMAT_NAME = "npgjax-checkpoint"
STATE_FILE, META_FILE, OLD_FILE = "checkpoint.msgpack", "checkpoint.json", "checkpoint.pkl"


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, of another format version or config."""


def jsonable(x: Any) -> Any:
    """``x`` with tuples as lists, NumPy scalars as Python ones and non-finite as None."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if np.isfinite(x) else None
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    return x


def _env_params_dict(params: Any) -> dict[str, Any] | None:
    if params is None:
        return None
    if isinstance(params, tuple):
        return dict(params)
    if dataclasses.is_dataclass(params):
        return {f.name: np.asarray(getattr(params, f.name)).tolist()
                for f in dataclasses.fields(params)}
    return {"repr": repr(params)}


def config_dict(config: Any) -> dict[str, Any]:
    """The config as plain JSON values: env name, kwargs and params, then every option."""
    out: dict[str, Any] = {"env": config.env_name, "algo": config.algo,
                           "env_kwargs": dict(config.env_kwargs),
                           "env_params": _env_params_dict(config.env_params)}
    for f in dataclasses.fields(config):
        if f.name not in out and f.name != "options":
            out[f.name] = getattr(config, f.name)
    out.update(dataclasses.asdict(config.options))
    return out


def _tuples(x: Any) -> Any:
    return tuple(_tuples(v) for v in x) if isinstance(x, list) else x


def _like(value: Any, default: Any) -> Any:
    """A JSON value converted to the type (or dtype) of an env params field's default."""
    if isinstance(default, bool | int | float):
        return type(default)(value)
    if hasattr(default, "dtype"):
        import jax.numpy as jnp

        return jnp.asarray(value, default.dtype)
    return value


def config_from_dict(d: dict[str, Any], env: Any = None, env_is_id: bool = True) -> Any:
    """Rebuild the :class:`~npgjax.rl.Config` that :func:`config_dict` wrote.

    Args:
      d: the config as written in ``checkpoint.json``.
      env: the environment object, for a run trained on one (not a registry id).
      env_is_id: whether the run's ``env`` was a registry id.
    """
    from npgjax.rl.configs import get_config
    from npgjax.rl.envs import env_name, make_env

    d = dict(d)
    name, algo = d.pop("env"), d.pop("algo")
    kwargs, params = d.pop("env_kwargs") or {}, d.pop("env_params")
    if env is None:
        if not env_is_id:
            raise CheckpointError(
                f"this run trained on an environment object ({name}), not a gymnax registry "
                "id: pass the same environment, e.g. load_policy(run_dir, env=MyEnv()).")
        env = name
    elif env_name(env) != name:
        raise CheckpointError(f"env={env_name(env)!r} does not match the run's "
                              f"environment {name!r}.")
    if isinstance(params, dict) and "repr" in params:
        raise CheckpointError(f"cannot rebuild env_params from {params['repr']!r}.")
    if params is not None:
        default = make_env(env, kwargs).params
        params = {k: _like(v, getattr(default, k, None)) for k, v in params.items()}
    overrides = {k: _tuples(v) for k, v in d.items()}
    return get_config(env, algo, env_kwargs=kwargs, env_params=params, **overrides)


def write_checkpoint(run_dir: Path, state: Any, meta: dict[str, Any],
                     arrays: dict[str, Any] | None = None) -> None:
    """Write ``state`` (a host pytree) and ``arrays`` as msgpack, ``meta`` as JSON."""
    from flax import serialization

    from npgjax._version import __version__

    data = serialization.msgpack_serialize(
        {"state": serialization.to_state_dict(state), "arrays": dict(arrays or {})})
    head = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION,
            "npgjax_version": __version__, "state_file": STATE_FILE,
            "state_sha256": hashlib.sha256(data).hexdigest()}
    run_dir = Path(run_dir)
    atomic_write(run_dir / STATE_FILE, data)
    atomic_write(run_dir / META_FILE,
                 (json.dumps(jsonable({**head, **meta}), indent=1) + "\n").encode())


def read_metadata(run_dir: Path) -> dict[str, Any]:
    """The checked ``checkpoint.json`` of ``run_dir``; CheckpointError if unusable."""
    run_dir = Path(run_dir)
    path = run_dir / META_FILE
    if not path.exists():
        if (run_dir / OLD_FILE).exists():
            raise CheckpointError(
                f"{run_dir / OLD_FILE} is a checkpoint of an older npgjax (format version 1, "
                "a pickle: unsafe to load, so no longer read); rerun the training (without "
                "--resume) to write the current format.")
        why = ("the directory does not exist" if not run_dir.exists() else
               f"expected {META_FILE} and {STATE_FILE}, written by npgjax-train or save_policy")
        raise CheckpointError(f"no checkpoint in {run_dir} ({why}).")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is corrupt: {type(e).__name__}: {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path} is not an npgjax checkpoint.")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        newer = isinstance(version, int) and version > FORMAT_VERSION
        raise CheckpointError(
            f"{path} has checkpoint format version {version!r} (written by npgjax "
            f"{meta.get('npgjax_version')}); this npgjax reads version {FORMAT_VERSION}"
            + ("; upgrade npgjax to read it." if newer else "; rerun the training."))
    return meta


def read_checkpoint(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """``(metadata, state dict, arrays)`` of ``run_dir``, checked against the metadata."""
    from flax import serialization

    meta = read_metadata(run_dir)
    path = Path(run_dir) / STATE_FILE
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e}") from e
    if data[:1] == b"\x80" and data[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        raise CheckpointError(f"{path} is a pickle (an unsafe, old format); not loaded.")
    if hashlib.sha256(data).hexdigest() != meta.get("state_sha256"):
        raise CheckpointError(f"{path} is corrupt or does not belong to {META_FILE} (its "
                              "SHA-256 differs from the one recorded there).")
    try:
        tree = serialization.msgpack_restore(data)
    except Exception as e:
        raise CheckpointError(f"{path} is corrupt: {type(e).__name__}: {e}") from e
    if not isinstance(tree, dict) or not isinstance(tree.get("state"), dict):
        raise CheckpointError(f"{path} holds no training state.")
    return meta, tree["state"], dict(tree.get("arrays") or {})


def _check(target: Any, loaded: Any, path: str, where: str) -> None:
    if isinstance(target, dict):
        if not isinstance(loaded, dict):
            raise CheckpointError(f"{where}: {path or 'the state'} should be a mapping, got "
                                  f"{type(loaded).__name__}.")
        missing, extra = sorted(set(target) - set(loaded)), sorted(set(loaded) - set(target))
        if missing or extra:
            raise CheckpointError(f"{where}: {path or 'the state'} has missing key(s) "
                                  f"{missing} and unexpected key(s) {extra}.")
        for k in target:
            _check(target[k], loaded[k], f"{path}/{k}" if path else str(k), where)
        return
    if target is None:
        if loaded is not None:
            raise CheckpointError(f"{where}: {path} should be empty (None).")
        return
    shape, dtype = tuple(target.shape), np.dtype(target.dtype)
    got = np.asarray(loaded) if isinstance(loaded, np.ndarray | np.generic | int | float) else None
    if got is None or got.shape != shape or got.dtype != dtype:
        desc = (f"{got.dtype}{list(got.shape)}" if got is not None else type(loaded).__name__)
        raise CheckpointError(f"{where}: leaf {path} is {desc}, expected "
                              f"{dtype}{list(shape)} (a checkpoint of another config?).")


def restore(target: Any, state_dict: Any, where: str = "checkpoint") -> Any:
    """``state_dict`` put into the structure of ``target``, every leaf checked.

    Args:
      target: a pytree of arrays or ``jax.ShapeDtypeStruct`` (e.g. from ``jax.eval_shape``).
      state_dict: the loaded state (nested dicts of NumPy arrays).
      where: named in the errors (e.g. the file).

    Raises:
      CheckpointError: a missing or unexpected key, or a leaf of another shape or dtype.
    """
    from flax import serialization

    _check(serialization.to_state_dict(target), state_dict, "", where)
    return serialization.from_state_dict(target, state_dict)
