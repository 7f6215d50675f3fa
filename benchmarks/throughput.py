"""Training throughput: env steps per second of whole jitted updates, side by side.

For each setting below, ``make_trainer(config).update`` (rollout, GAE, policy step,
critic fit) is scanned over ``--chunk`` updates inside one ``jax.jit`` (vmapped over
seeds where the setting says so), compiled ahead of time, run once as a warmup, and
then timed over ``--repeats`` chunks. The settings are interleaved repeat by repeat so
that the load of a shared machine hits them alike; the table gives the median env
steps/s (all seeds together), the milliseconds per update, the compile time, and the
ratio to the first row.

Settings (CartPole-v1 unless named):

* ``zoo trpo``: the RL-zoo TRPO settings of ``compare_sb3.py`` (2 envs x 512 steps,
  20 critic passes of 2 minibatches, 15 CG iterations, line search), one seed;
* ``zoo trpo, fisher 10%``: the same with the Fisher on a 10% subsample;
* ``npg defaults``: ``get_config("CartPole-v1", "npg")`` (8 envs x 128), one seed;
* ``npg defaults x S seeds``: the same, vmapped over seeds;
* ``npg wide``: 1,024 envs x 16 steps per update (batch 16,384), one seed;
* ``Pendulum npg defaults``: continuous actions.

Run ``.venv/bin/python benchmarks/throughput.py`` (about 2 minutes on 2 CPU cores),
``--quick`` for a smoke test, ``--json PATH`` to save the results. It runs on whatever
device JAX picks, so the same command measures a GPU where one is present.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import jax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_model, load_average

from npgjax.rl import get_config, make_trainer

ZOO = {
    "num_envs": 2, "num_steps": 512, "vf_minibatch": 512, "vf_epochs": 20,
    "gae_lambda": 0.98, "gamma": 0.99, "damping": 1e-3, "max_kl": 0.01, "vf_lr": 1e-3,
    "cg_iters": 15, "normalize_obs": False,
}


def settings(seeds: int) -> list[tuple[str, str, str, dict[str, Any], int]]:
    """(label, env, algo, overrides, number of vmapped seeds; 0 = no vmap)."""
    return [
        ("zoo trpo", "CartPole-v1", "trpo", ZOO, 0),
        ("zoo trpo, fisher 10%", "CartPole-v1", "trpo", dict(ZOO, fisher_fraction=0.1), 0),
        ("npg defaults", "CartPole-v1", "npg", {}, 0),
        (f"npg defaults x {seeds} seeds", "CartPole-v1", "npg", {}, seeds),
        ("npg wide (1024 envs x 16)", "CartPole-v1", "npg",
         {"num_envs": 1024, "num_steps": 16, "vf_minibatch": 4096}, 0),
        ("Pendulum npg defaults", "Pendulum-v1", "npg", {}, 0),
    ]


def build(env: str, algo: str, overrides: dict[str, Any], n_seeds: int, chunk: int):
    config = get_config(env, algo, total_timesteps=10**9, **overrides)
    trainer = make_trainer(config)

    def run_chunk(state):
        return jax.lax.scan(lambda s, _: trainer.update(s), state, None, length=chunk)

    if n_seeds:
        keys = jax.random.split(jax.random.PRNGKey(0), n_seeds)
        init, run_chunk = jax.vmap(trainer.init), jax.vmap(run_chunk)
    else:
        keys = jax.random.PRNGKey(0)
        init = trainer.init
    t = time.perf_counter()
    state = jax.jit(init)(keys)
    fn = jax.jit(run_chunk).lower(state).compile()
    compile_s = time.perf_counter() - t
    state, m = fn(state)  # warmup
    jax.block_until_ready(m)
    steps = chunk * config.batch_size * max(n_seeds, 1)
    return fn, state, steps, compile_s


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small chunks, 2 repeats")
    p.add_argument("--chunk", type=int, default=8, help="updates per timed call")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seeds", type=int, default=8, help="seeds in the vmapped row")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    args = p.parse_args(argv)
    chunk, repeats = (2, 2) if args.quick else (args.chunk, args.repeats)
    dev = jax.devices()[0]
    print(f"machine: {cpu_model()} ({platform.machine()}), cpu_count={os.cpu_count()}, "
          f"jax {jax.__version__}, device={dev.device_kind} ({dev.platform}), "
          f"load average {load_average()}", flush=True)
    rows = []
    for label, env, algo, over, n in settings(args.seeds):
        fn, state, steps, compile_s = build(env, algo, over, n, chunk)
        rows.append({"label": label, "fn": fn, "state": state, "steps": steps,
                     "compile_s": compile_s, "times": [], "updates": chunk * max(n, 1)})
        print(f"  compiled {label}: {compile_s:.1f} s", flush=True)
    for _ in range(repeats):
        for r in rows:
            t = time.perf_counter()
            r["state"], m = r["fn"](r["state"])
            jax.block_until_ready(m)
            r["times"].append(time.perf_counter() - t)
    base = None
    out = []
    print(f"\n{'setting':34s} {'env steps/s':>12s} {'ms/update':>10s} {'compile s':>10s} "
          f"{'ratio':>7s}")
    for r in rows:
        t = statistics.median(r["times"])
        sps = r["steps"] / t
        base = base or sps
        ms = 1e3 * t / chunk
        print(f"{r['label']:34s} {sps:12,.0f} {ms:10.2f} {r['compile_s']:10.1f} "
              f"{sps / base:6.2f}x")
        out.append({"setting": r["label"], "steps_per_s": sps, "ms_per_update": ms,
                    "compile_s": r["compile_s"], "times": r["times"],
                    "steps_per_call": r["steps"]})
    print(f"load average at the end: {load_average()}; device {dev.device_kind}")
    if args.json:
        args.json.write_text(json.dumps({"device": dev.device_kind, "rows": out}, indent=1))
    return out


if __name__ == "__main__":
    main()
