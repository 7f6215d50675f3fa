"""Two host devices on one CPU: seeds vmapped on one device, ``shard="tasks"``, ``shard="seeds"``.

XLA runs the operations of one program on a CPU one after the other, so a small update
keeps one core busy at a time. Two host devices (``jax_num_cpu_devices``) run two
programs at once. This times, for each seed count, whole training runs (one
``jax.jit``, compiled ahead of time, the modes interleaved, ``--repeats`` runs each)
of CartPole-v1 TRPO with the RL-zoo settings of ``compare_sb3.py`` (or the NPG
defaults with ``--npg-defaults``):

* ``plain``: ``jax.vmap(make_train(config))`` on one device (as without host devices);
* ``tasks``: ``make_sharded_train(config, devices=2, shard="tasks")``: each update's
  policy step on one device and its critic fit on the other (:mod:`npgjax.rl.tasks`);
* ``seeds``: ``make_sharded_train(config, devices=2, shard="seeds")``: half the seeds
  on each device (even seed counts).

Run ``.venv/bin/python benchmarks/host_devices.py`` (about 4 minutes on 2 cores;
``--quick`` for a smoke test, ``--json PATH`` to save the results).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import jax

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_model, load_average


def build(config, mode: str, seeds: int):
    from npgjax.rl import compiler_options, make_sharded_train, make_train

    if mode == "plain":
        fn = jax.vmap(make_train(config))
    else:
        fn = make_sharded_train(config, devices=2, shard=mode, seeds=seeds)
    return jax.jit(fn, compiler_options=compiler_options())


def measure(config, seeds: int, repeats: int) -> dict[str, dict[str, float]]:
    import numpy as np

    keys = jax.random.split(jax.random.PRNGKey(0), seeds)
    modes = ["plain", "tasks"] + (["seeds"] if seeds % 2 == 0 else [])
    compiled, out = {}, {}
    for mode in modes:
        t = time.perf_counter()
        compiled[mode] = build(config, mode, seeds).lower(keys).compile()
        out[mode] = {"compile_s": time.perf_counter() - t, "runs_s": []}
    for _ in range(repeats):  # interleaved: slow drifts of the machine hit every mode
        for mode in modes:
            t = time.perf_counter()
            _, metrics = compiled[mode](keys)
            returns = np.asarray(metrics["train_return"])  # waits for the run
            out[mode]["runs_s"].append(time.perf_counter() - t)
            out[mode]["final_train_return_mean"] = float(np.nanmean(returns[:, -1]))
    steps = seeds * config.num_updates * config.batch_size
    for r in out.values():
        r["median_s"] = statistics.median(r["runs_s"])
        r["env_steps_per_s"] = steps / r["median_s"]
    for r in out.values():
        r["speedup"] = out["plain"]["median_s"] / r["median_s"]
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 8, 16])
    parser.add_argument("--timesteps", type=int, default=51_200,
                        help="env steps per seed (default: %(default)s, 50 updates)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--npg-defaults", action="store_true",
                        help="CartPole-v1 NPG with its defaults instead of the zoo TRPO")
    parser.add_argument("--quick", action="store_true", help="smoke test")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.timesteps, args.repeats = [2], 4_096, 1
    jax.config.update("jax_num_cpu_devices", 2)  # before JAX's first use
    from compare_sb3 import NPGJAX_CONFIG

    from npgjax.rl import get_config

    if args.npg_defaults:
        config = get_config("CartPole-v1", "npg", total_timesteps=args.timesteps)
        label = "CartPole-v1 NPG defaults"
    else:
        cfg = dict(NPGJAX_CONFIG, hidden=tuple(NPGJAX_CONFIG["hidden"]))
        config = get_config("CartPole-v1", "trpo", total_timesteps=args.timesteps, **cfg)
        label = "CartPole-v1 TRPO, RL-zoo settings (compare_sb3.py)"
    print(f"{label}: {config.num_updates} updates of {config.batch_size} env steps per seed")
    print(f"machine: {cpu_model()}, {jax.local_device_count()} host devices, jax "
          f"{jax.__version__}; load average {load_average()}")
    print("| seeds | mode | compile s | run s (median) | env steps/s | vs plain |")
    print("| --- | --- | --- | --- | --- | --- |")
    results = {}
    for seeds in args.seeds:
        results[seeds] = r = measure(config, seeds, args.repeats)
        for mode, m in r.items():
            print(f"| {seeds} | {mode} | {m['compile_s']:.1f} | {m['median_s']:.2f} | "
                  f"{m['env_steps_per_s']:,.0f} | {m['speedup']:.2f}x |", flush=True)
    print(f"load average at end: {load_average()}")
    out = {"config": label, "cpu": cpu_model(), "jax": jax.__version__, "results": results}
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
