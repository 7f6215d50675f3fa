"""One ``npgjax-train`` command's state, and its checkpoint: resume and save."""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from npgjax.cli import devices, io
from npgjax.cli.report import summarize

__all__ = ["Run", "check_resume", "resume", "save_run"]


@dataclasses.dataclass
class Run:
    """What changes while the command runs."""

    args: argparse.Namespace
    config: Any
    out: Path
    chunk: int
    target: float | None
    chunks_done: int = 0
    metrics: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    times: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    sessions: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    state: Any = None
    tb: Any = None  # the TensorBoard log (--tensorboard)
    mesh: Any = None  # the device mesh, None on one device (the plain vmapped path)
    shardings: Any = None  # (keys, state, replicated) shardings on the mesh
    writer: bool = True  # process 0 (or the only one): writes files and prints

    @property
    def n_chunks(self) -> int:
        return self.config.num_updates // self.chunk

    def header(self, device: Any) -> dict[str, Any]:
        a = self.args
        return {"env": self.config.env_name, "algo": self.config.algo, "seeds": a.seeds,
                "seed": a.seed, "complete": self.chunks_done == self.n_chunks,
                "chunk_updates": self.chunk, "chunks_done": self.chunks_done,
                "sessions": self.sessions, "device": device,
                "config": io.config_dict(self.config)}


def check_resume(ckpt: dict[str, Any], expect: dict[str, Any], out: Path) -> str | None:
    """A message listing what differs between the checkpoint and this run, or None."""
    diffs = []
    for key in ("seeds", "seed", "chunk_updates"):
        if ckpt.get(key) != expect[key]:
            diffs.append(f"{key}: checkpoint {ckpt.get(key)!r}, now {expect[key]!r}")
    old, new = ckpt.get("config", {}), expect["config"]
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            diffs.append(f"{key}: checkpoint {old.get(key)!r}, now {new.get(key)!r}")
    if not diffs:
        return None
    return (f"--resume: the checkpoint in {out} was made with different options "
            f"({'; '.join(diffs)}); rerun with the same options or use another --out")


def resume(run: Run, trainer: Any, keys: Any, parser: argparse.ArgumentParser
            ) -> dict[str, Any]:
    import jax

    try:
        ckpt = io.load_checkpoint(run.out, jax.eval_shape(jax.vmap(trainer.init), keys))
    except ValueError as e:
        parser.error(f"--resume: {str(e).splitlines()[0]}")
    cfg = json.loads(json.dumps(io.jsonable(io.config_dict(run.config))))
    msg = check_resume(ckpt, {"seeds": run.args.seeds, "seed": run.args.seed,
                               "chunk_updates": run.chunk, "config": cfg}, run.out)
    if msg:
        parser.error(msg)
    run.chunks_done = int(ckpt["chunks_done"])
    if ckpt["times"].shape[0] != run.chunks_done * run.chunk:
        parser.error(f"--resume: the checkpoint in {run.out} holds "
                     f"{ckpt['times'].shape[0]} updates, not chunks_done x chunk_updates")
    run.metrics = {k: np.asarray(v) for k, v in ckpt["metrics"].items()}
    run.times = ckpt["times"]
    run.sessions = list(ckpt["sessions"])
    return ckpt


def save_run(run: Run, device: dict[str, Any], session: dict[str, Any], t_start: float) -> None:
    state = devices.host_state(run.state)
    if not run.writer:
        return
    session["wall_time_s"] = time.perf_counter() - t_start
    io.write_csv(run.out / "metrics.csv", run.metrics)
    summary = summarize(run.header(device), run.config, run.metrics, run.times, run.target)
    io.atomic_write(run.out / "summary.json",
                    (json.dumps(io.jsonable(summary), indent=2) + "\n").encode())
    meta = {"chunks_done": run.chunks_done, "chunk_updates": run.chunk,
            "seeds": run.args.seeds, "seed": run.args.seed, "sessions": run.sessions,
            "env_is_id": True, "config": io.config_dict(run.config)}
    io.save_checkpoint(run.out, state, meta, run.metrics, run.times)


