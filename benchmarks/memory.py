"""Policies with memory: GRU NPG against MLP NPG on tasks that need memory (issue #10).

* ``memorychain``: MemoryChain-bsuite with its defaults (a context bit shown only at
  the first step, asked for at the last; return +1 or -1, random 0). Target: GRU NPG
  ends with a mean return >= 0.9 in at least 4 of 5 seeds within 200k env steps,
  where the MLP stays near 0.
* ``cartpole``: CartPole-v1 without its velocities (``obs_keep=(0, 2)``). Target: GRU
  NPG reaches 475 in at least 4 of 5 seeds within 1M env steps, the MLP below 200.

Every seed of a network trains in one ``jit(vmap(make_train))``; the final return is
the last evaluation of the deterministic policy (``eval_return``) and the running mean
of the last training episodes (``train_return``).

Usage::

    python benchmarks/memory.py memorychain --seeds 5 --total-timesteps 200000
    python benchmarks/memory.py cartpole --seeds 5 --total-timesteps 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _machine import cpu_model, load_average

from npgjax.rl import get_config, make_train

TASKS = {
    "memorychain": ("MemoryChain-bsuite", {}, 0.9, "mean return >= 0.9"),
    "cartpole": ("CartPole-v1", {"obs_keep": (0, 2)}, 475.0, "reaches 475"),
}


def run(task: str, network: str, seeds: int, steps: int, seed: int) -> dict:
    env, extra, target, _ = TASKS[task]
    cfg = get_config(env, "npg", network=network, total_timesteps=steps, **extra)
    train = jax.jit(jax.vmap(make_train(cfg)))
    keys = jax.random.split(jax.random.PRNGKey(seed), seeds)
    t0 = time.perf_counter()
    _, m = jax.block_until_ready(train(keys))
    wall = time.perf_counter() - t0
    ev, tr = np.asarray(m["eval_return"]), np.asarray(m["train_return"])
    steps_axis = np.asarray(m["env_steps"])[0]
    final_eval = np.array([e[~np.isnan(e)][-1] for e in ev])
    final_train = tr[:, -1]
    hit = [int(steps_axis[np.argmax(e >= target)]) if np.any(e >= target) else None
           for e in np.where(np.isnan(ev), -np.inf, ev)]
    return {"network": network, "env": env, "extra": {k: list(v) for k, v in extra.items()},
            "steps": int(steps_axis[-1]), "seconds": round(wall, 1),
            "final_eval": [round(float(x), 3) for x in final_eval],
            "final_train": [round(float(x), 3) for x in final_train], "first_eval_hit": hit,
            "best_eval": [round(float(np.nanmax(e)), 3) for e in ev],
            "best_train": [round(float(np.nanmax(t)), 3) for t in tr],
            "config": {k: getattr(cfg, k) for k in ("num_envs", "num_steps", "hidden",
                                                    "max_kl", "fisher", "gamma")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("task", choices=tuple(TASKS))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--total-timesteps", type=int, default=None)
    parser.add_argument("--networks", default="gru,mlp")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="write the results here")
    a = parser.parse_args()
    steps = a.total_timesteps or (200_000 if a.task == "memorychain" else 1_000_000)
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs, load {load_average()}; "
          f"jax {jax.__version__}")
    _, _, target, what = TASKS[a.task]
    results = []
    for net in a.networks.split(","):
        r = run(a.task, net, a.seeds, steps, a.seed)
        results.append(r)
        ok = sum(x >= target for x in r["final_eval"])
        print(f"{r['env']} {r['extra'] or ''} {net}: {r['steps']:,} steps in {r['seconds']} s; "
              f"final eval {r['final_eval']}, final train {r['final_train']}, best eval "
              f"{r['best_eval']}, best train {r['best_train']}, first eval hit at "
              f"{r['first_eval_hit']}; {what}: {ok}/{a.seeds} seeds", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"machine": cpu_model(), "load": load_average(), "results": results},
                      f, indent=1)


if __name__ == "__main__":
    main()
