"""What the speed levers cost in learning: TRPO on CartPole-v1 with the RL-zoo settings.

Issue #3 names two standard levers for a cheaper update: the Fisher on a subsample of
the batch (the original TRPO used 10%) and fewer critic passes. Each row below trains
``--seeds`` seeds (vmapped in one jit, keys ``split(PRNGKey(0), seeds)``) for 100k env
steps with the zoo settings of ``compare_sb3.py`` plus the row's overrides, and reports
how many seeds reach a 20-episode mean of 475 within the budget (and the median env
step at which they do), how many end there, and the training env steps/s of the row
(all seeds together, compilation excluded, measured in this run).

Run ``.venv/bin/python benchmarks/levers.py`` (about 3 minutes on 2 CPU cores),
``--json PATH`` to save the results.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_model, load_average
from compare_sb3 import LEVERS, NPGJAX_CONFIG

from npgjax.rl import get_config, make_train

TARGET = 475.0

ROWS: list[tuple[str, dict[str, Any]]] = [
    ("zoo settings", {}),
    ("Fisher on 10%", {"fisher_fraction": 0.1}),
    ("5 critic passes (lr 1e-3)", {"vf_epochs": 5}),
    ("5 critic passes, lr 1e-2", {"vf_epochs": 5, "vf_lr": 1e-2}),
    ("all levers (compare_sb3 --levers)", LEVERS),
]


def run(overrides: dict[str, Any], seeds: int) -> dict[str, Any]:
    cfg = dict(NPGJAX_CONFIG, **overrides)
    cfg["hidden"] = tuple(cfg["hidden"])
    config = get_config("CartPole-v1", "trpo", **cfg)
    keys = jax.random.split(jax.random.PRNGKey(0), seeds)
    train = jax.jit(jax.vmap(make_train(config))).lower(keys).compile()
    t = time.perf_counter()
    _, m = train(keys)
    ret = np.asarray(m["train_return"])  # waits
    train_s = time.perf_counter() - t
    B = config.batch_size
    cross = [int((np.argmax(r >= TARGET) + 1) * B) if np.any(r >= TARGET) else None
             for r in ret]
    reached = [c for c in cross if c is not None]
    return {
        "overrides": overrides,
        "reached": len(reached),
        "median_crossing": float(np.median(reached)) if reached else None,
        "crossings": cross,
        "ended_at_target": int(np.sum(ret[:, -1] >= TARGET)),
        "final_returns": [round(float(x), 1) for x in ret[:, -1]],
        "steps_per_s": seeds * config.num_updates * B / train_s,
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    args = p.parse_args(argv)
    dev = jax.devices()[0]
    print(f"machine: {cpu_model()} ({platform.machine()}), cpu_count={os.cpu_count()}, "
          f"jax {jax.__version__}, device={dev.device_kind}, load average {load_average()}")
    print(f"TRPO, CartPole-v1, zoo settings, {args.seeds} seeds x 100k env steps; "
          f"target {TARGET:g}\n")
    print(f"{'row':36s} {'reached 475':>11s} {'median step':>11s} {'ended >= 475':>12s} "
          f"{'env steps/s':>12s}")
    out = []
    for label, over in ROWS:
        r = run(over, args.seeds)
        r["row"] = label
        out.append(r)
        med = f"{r['median_crossing'] / 1e3:.0f}k" if r["median_crossing"] else "-"
        print(f"{label:36s} {r['reached']:>5d} / {args.seeds:<3d} {med:>11s} "
              f"{r['ended_at_target']:>6d} / {args.seeds:<3d} {r['steps_per_s']:12,.0f}",
              flush=True)
    print(f"\nload average at the end: {load_average()}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
