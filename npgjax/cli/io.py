"""Files of a run directory: atomic writes, the metrics CSV, JSON and checkpoints.

Checkpoints use the safe format of :mod:`npgjax.rl.checkpoint` (msgpack and JSON).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from npgjax._files import atomic_write

# One implementation, shared with the checkpoint format (the RL layer cannot import the CLI).
from npgjax.rl.checkpoint import config_dict, jsonable

__all__ = ["TensorBoardLog", "acquire_lock", "atomic_write", "config_dict", "jsonable",
           "load_checkpoint", "prepare_out", "release_lock", "save_checkpoint", "write_csv"]


# Column order of metrics.csv after seed, update, env_steps; other metrics follow sorted.
METRIC_ORDER = (
    "train_return", "eval_return", "episode_length", "eval_length", "episodes",
    "rollout_return", "kl", "max_kl", "predicted_kl", "entropy", "value_loss",
    "explained_variance", "cg_iterations", "cg_residual", "cosine", "ls_tries", "ls_accepted",
)


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


def save_checkpoint(run_dir: Path, state: Any, meta: dict[str, Any],
                    metrics: dict[str, np.ndarray], times: np.ndarray) -> None:
    """Write the run's checkpoint: the state of all seeds and the metrics as msgpack
    (``checkpoint.msgpack``), the rest as JSON (``checkpoint.json``). No pickle."""
    from npgjax.rl.checkpoint import OLD_FILE, write_checkpoint

    write_checkpoint(run_dir, state, {"kind": "run", **meta},
                     {"metrics": dict(metrics), "times": np.asarray(times, np.float64)})
    old = Path(run_dir) / OLD_FILE
    if old.exists():  # a pickle of an earlier run in this folder: replaced by this run
        old.unlink()


def load_checkpoint(run_dir: Path, target: Any) -> dict[str, Any]:
    """Read the checkpoint of ``run_dir``, the state restored into ``target``.

    Args:
      run_dir: the run directory.
      target: the state's structure (``jax.eval_shape`` of the vmapped init).

    Returns:
      The metadata, with ``state``, ``metrics`` and ``times`` added.

    Raises:
      ValueError: (``CheckpointError``) no checkpoint, a corrupt file, another format
        version, a missing key or a leaf of another shape or dtype.
    """
    from npgjax.rl.checkpoint import STATE_FILE, CheckpointError, read_checkpoint, restore

    meta, state, arrays = read_checkpoint(run_dir)
    where = str(Path(run_dir) / STATE_FILE)
    if meta.get("kind") != "run":
        raise CheckpointError(f"{where} was written by save_policy, not by npgjax-train: "
                              "it has no metrics to resume from.")
    metrics = arrays.get("metrics")
    times = np.asarray(arrays.get("times", np.zeros(0)), np.float64)
    seeds, n = int(meta.get("seeds", 0)), times.shape[0]
    if not isinstance(metrics, dict) or any(
            np.shape(v) != (seeds, n) for v in metrics.values()):
        raise CheckpointError(f"{where}: the metrics are missing or not [{seeds}, {n}] "
                              "arrays.")
    return dict(meta, state=restore(target, state, where), metrics=metrics, times=times)


LOCK_FILE = ".npgjax.lock"


def _first_file_above(path: Path) -> Path | None:
    for parent in [path, *path.parents]:
        if parent.exists() and not parent.is_dir():
            return parent
    return None


def prepare_out(out: Path, must_exist: bool = False) -> None:
    """Create the output directory, or raise ValueError with one line saying why not."""
    file = _first_file_above(out)
    if file == out:
        raise ValueError(f"--out {out} is a file, not a directory")
    if file is not None:
        raise ValueError(f"--out {out}: cannot create the directory, {file} is a file")
    if must_exist and not out.is_dir():
        raise ValueError(f"--resume: no checkpoint in {out} (the directory does not exist)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--out {out}: cannot create the directory "
                         f"({e.strerror or type(e).__name__})") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out}: the directory is not writable")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def acquire_lock(out: Path) -> Path:
    """Lock ``out`` for this process: a lock file holding its pid and host.

    A lock left by a process that no longer runs (on this host) is taken over; one held
    by a running process is a ValueError naming it.
    """
    import socket

    path, host = out / LOCK_FILE, socket.gethostname()
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = path.read_text(errors="replace").split() if path.exists() else []
            pid = int(owner[0]) if owner and owner[0].isdigit() else None
            other_host = len(owner) > 1 and owner[1] != host
            if pid is not None and (other_host or _pid_alive(pid)):
                where = f" on {owner[1]}" if other_host else ""
                raise ValueError(
                    f"--out {out} is in use by another npgjax-train (pid {pid}{where}); wait "
                    f"for it to finish or choose another --out (if no such process runs, "
                    f"delete {path})") from None
            with contextlib.suppress(FileNotFoundError):  # stale: the owner is gone
                path.unlink()
            continue
        except OSError as e:
            raise ValueError(f"--out {out}: cannot write in the directory "
                             f"({e.strerror or type(e).__name__})") from None
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()} {host}\n")
        return path
    raise ValueError(f"--out {out}: cannot take the lock {path}")


def release_lock(path: Path) -> None:
    """Remove the lock file if this process still owns it."""
    with contextlib.suppress(OSError):
        if path.read_text().split()[:1] == [str(os.getpid())]:
            path.unlink()


def tensorboard_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorboardX") is not None


class TensorBoardLog:
    """Every metric per update and seed as TensorBoard scalars (``seed<i>/<metric>``).

    The step is the update number (from 1); non-finite values (e.g. ``eval_return``
    between evaluations) are left out.
    """

    def __init__(self, logdir: Path) -> None:
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(str(logdir))

    def write(self, metrics: dict[str, Any], first_update: int) -> None:
        for name, values in metrics.items():
            values = np.asarray(values, np.float64)
            for s, row in enumerate(values):
                for j, v in enumerate(row):
                    if np.isfinite(v):
                        self.writer.add_scalar(f"seed{s}/{name}", v, first_update + j)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
