"""Learning targets from issue #3: NPG and TRPO on CartPole, Acrobot and Pendulum.

Each row trains 5 seeds vmapped in one jit for 100k env steps with the per-environment
defaults of ``npgjax.rl.get_config`` and reports the final mean return over the last 20
episodes per seed, how many seeds meet the target, and the first env step at which the
20-episode mean crossed it.

    .venv/bin/python benchmarks/learning.py                 # all rows
    .venv/bin/python benchmarks/learning.py --env CartPole-v1 --algo npg
    .venv/bin/python benchmarks/learning.py --json results.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import numpy as np

from npgjax.rl import get_config, make_train

TARGETS = {"CartPole-v1": 475.0, "Pendulum-v1": -250.0, "Acrobot-v1": -100.0}


def run(env: str, algo: str, seeds: int, steps: int) -> dict:
    cfg = get_config(env, algo, total_timesteps=steps)
    train = jax.jit(jax.vmap(make_train(cfg)))
    keys = jax.random.split(jax.random.PRNGKey(0), seeds)
    t0 = time.perf_counter()
    compiled = train.lower(keys).compile()
    t1 = time.perf_counter()
    _, m = compiled(keys)
    ret = np.asarray(jax.block_until_ready(m["train_return"]))
    t2 = time.perf_counter()
    env_steps = np.asarray(m["env_steps"][0])
    target = TARGETS[env]
    first = [
        int(env_steps[np.argmax(r >= target)]) if np.any(r >= target) else None for r in ret
    ]
    final = ret[:, -1]
    return {
        "env": env,
        "algo": algo,
        "seeds": seeds,
        "env_steps": int(env_steps[-1]),
        "target": target,
        "final_returns": [round(float(x), 1) for x in final],
        "seeds_at_target": int(np.sum(final >= target)),
        "first_crossing_steps": first,
        "compile_s": round(t1 - t0, 1),
        "train_s": round(t2 - t1, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", choices=sorted(TARGETS), action="append")
    p.add_argument("--algo", choices=["npg", "trpo", "vpg", "enac"], action="append")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--json", help="write the rows to this file")
    a = p.parse_args()
    envs = a.env or ["CartPole-v1", "Pendulum-v1", "Acrobot-v1"]
    algos = a.algo or ["npg", "trpo"]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"jax {jax.__version__} on {jax.devices()[0].platform}")
    hdr = f"{'env':<13} {'algo':<5} {'target':>7} {'ok':>5}  {'final returns per seed':<40}"
    hdr += " first crossing"
    print(hdr)
    rows = []
    for env in envs:
        for algo in algos:
            r = run(env, algo, a.seeds, a.steps)
            rows.append(r)
            fin = " ".join(f"{x:7.1f}" for x in r["final_returns"])
            cross = " ".join(
                "-" if c is None else f"{c // 1000}k" for c in r["first_crossing_steps"]
            )
            print(f"{env:<13} {algo:<5} {r['target']:7.0f} {r['seeds_at_target']:>2}/{a.seeds:<2} "
                  f" {fin:<40} {cross}   (compile {r['compile_s']} s, train {r['train_s']} s)",
                  flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
