"""Scaling over devices: environments sharded, a fixed global batch, 1 to 8 devices.

For each device count N (each in its own subprocess, with
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` on a CPU; on a GPU host the
real devices), NPG on CartPole-v1 with ``--envs`` environments x ``--steps`` steps per
update (the global batch, the same for every N) is trained with the environment axis
split over N devices (:func:`npgjax.rl.sharding.make_sharded_trainer`): a chunk of
``--chunk`` updates inside one ``jax.jit``, compiled ahead of time, run once as a
warmup, then timed over ``--repeats`` chunks. The table gives the median env steps/s,
the milliseconds per update, the compile time, and the collectives XLA put in the
compiled chunk (all-reduce, all-gather, all-to-all, collective-permute and
reduce-scatter ops in its text): the reductions the sharding costs. On one device the
same chunk is also timed without any sharding constraint ("plain"), so the first two
rows show what the constraints themselves cost.

On a CPU, host devices share the same cores: N host devices on 2 cores measure the
overhead of the partitioned program and its collectives, not a speed-up.

Run ``.venv/bin/python benchmarks/scaling.py`` (``--quick`` for a smoke test,
``--json PATH`` to save the results).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_model, load_average

COLLECTIVES = ("all-reduce", "all-gather", "all-to-all", "collective-permute",
               "reduce-scatter")


def worker(args: argparse.Namespace) -> list[dict]:
    """Time the sharded chunk on ``args.worker`` devices (and plain on one)."""
    import jax

    from npgjax.rl import get_config, make_trainer
    from npgjax.rl.mesh import make_mesh
    from npgjax.rl.sharding import make_sharded_trainer, state_sharding
    from npgjax.rl.trainer import run_updates

    n = args.worker
    config = get_config("CartPole-v1", "npg", num_envs=args.envs, num_steps=args.steps,
                        eval_every=0, total_timesteps=args.envs * args.steps * args.chunk)
    mesh = make_mesh(n, "envs")
    plain = make_trainer(config)
    rows = []
    for label, trainer in ([("plain", plain)] if n == 1 else []) + [
            ("sharded", make_sharded_trainer(config, mesh))]:
        state = jax.jit(trainer.init)(jax.random.PRNGKey(0))
        if label == "sharded":
            state = jax.device_put(state, state_sharding(state, mesh))
        t0 = time.perf_counter()
        run = jax.jit(lambda s, t=trainer: run_updates(t, s, 0, args.chunk))
        compiled = run.lower(state).compile()
        compile_s = time.perf_counter() - t0
        text = compiled.as_text()
        counts = {c: len(re.findall(rf"= [^=\n]* {c}(-start)?\(", text)) for c in COLLECTIVES}
        state, m = compiled(state)
        jax.block_until_ready(m)
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            state, m = compiled(state)
            jax.block_until_ready(m)
            times.append(time.perf_counter() - t0)
        dt = statistics.median(times)
        rows.append({"devices": n, "mode": label, "compile_s": round(compile_s, 2),
                     "env_steps_per_s": round(args.envs * args.steps * args.chunk / dt),
                     "ms_per_update": round(1e3 * dt / args.chunk, 2),
                     "collectives": {k: v for k, v in counts.items() if v}})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", default="1,2,4,8", help="device counts (default %(default)s)")
    parser.add_argument("--envs", type=int, default=64, help="global environments")
    parser.add_argument("--steps", type=int, default=32, help="steps per environment")
    parser.add_argument("--chunk", type=int, default=5, help="updates per timed call")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="1 and 2 devices, 2 repeats")
    parser.add_argument("--json", default=None, metavar="PATH")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        print(json.dumps(worker(args)))
        return
    counts = [1, 2] if args.quick else [int(c) for c in args.devices.split(",")]
    repeats = 2 if args.quick else args.repeats
    rows, load = [], [load_average()]
    for n in counts:
        env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}"}
        cmd = [sys.executable, __file__, "--worker", str(n), "--envs", str(args.envs),
               "--steps", str(args.steps), "--chunk", str(args.chunk),
               "--repeats", str(repeats)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if proc.returncode:
            sys.exit(f"{n} devices failed:\n{proc.stderr[-3000:]}")
        rows += json.loads(proc.stdout.strip().splitlines()[-1])
        load.append(load_average())
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; load averages before and after "
          f"each count: {load}")
    print(f"NPG CartPole-v1, global batch {args.envs} envs x {args.steps} steps, "
          f"{args.chunk} updates per call, median of {repeats}")
    print("| devices | sharding | env steps/s | ms / update | compile s | collectives |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        coll = ", ".join(f"{v} {k}" for k, v in r["collectives"].items()) or "none"
        print(f"| {r['devices']} | {r['mode']} | {r['env_steps_per_s']:,} | "
              f"{r['ms_per_update']} | {r['compile_s']} | {coll} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu_model(), "load": load,
                                               "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
