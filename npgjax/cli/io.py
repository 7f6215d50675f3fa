"""Files of a run directory: atomic writes, the metrics CSV, JSON and checkpoints."""

from __future__ import annotations

import dataclasses
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CHECKPOINT_VERSION", "atomic_write", "config_dict", "jsonable",
           "load_checkpoint", "save_checkpoint", "write_csv"]

CHECKPOINT_VERSION = 1

# Column order of metrics.csv after seed, update, env_steps; other metrics follow sorted.
METRIC_ORDER = (
    "train_return", "eval_return", "episode_length", "eval_length", "episodes",
    "rollout_return", "kl", "max_kl", "predicted_kl", "entropy", "value_loss",
    "explained_variance", "cg_iterations", "cg_residual", "cosine", "ls_tries", "ls_accepted",
)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def metric_columns(metrics: dict[str, np.ndarray]) -> list[str]:
    keys = [k for k in metrics if k != "env_steps"]
    return [k for k in METRIC_ORDER if k in keys] + sorted(set(keys) - set(METRIC_ORDER))


def write_csv(path: Path, metrics: dict[str, np.ndarray]) -> None:
    """``seed, update, env_steps`` and every metric, one row per seed and update."""
    cols = metric_columns(metrics)
    seeds, n = metrics["env_steps"].shape
    lines = [",".join(["seed", "update", "env_steps", *cols])]

    def column(x: np.ndarray) -> list[list[str]]:
        if np.issubdtype(x.dtype, np.integer) or x.dtype == bool:
            return [[str(int(v)) for v in row] for row in x.tolist()]
        return [[format(v, ".9g") for v in row] for row in x.astype(np.float64).tolist()]

    text = {k: column(np.asarray(metrics[k])) for k in ["env_steps", *cols]}
    for s in range(seeds):
        for u in range(n):
            lines.append(",".join([str(s), str(u + 1), *(text[k][s][u] for k in
                                                            ["env_steps", *cols])]))
    atomic_write(path, ("\n".join(lines) + "\n").encode())


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
    return x


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write the run's checkpoint (the state of all seeds, metrics, timings)."""
    payload = dict(payload, version=CHECKPOINT_VERSION)
    atomic_write(path, pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; ValueError if it is not one."""
    try:
        with open(path, "rb") as f:
            ckpt = pickle.load(f)
    except Exception as e:
        raise ValueError(f"cannot read {path}: {type(e).__name__}: {e}") from e
    if not isinstance(ckpt, dict) or ckpt.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path} is not an npgjax-train checkpoint (version "
                         f"{CHECKPOINT_VERSION})")
    return ckpt
