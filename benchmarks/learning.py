"""Learning rates: NPG and TRPO on CartPole, Acrobot and Pendulum, with 95% intervals.

Each row trains ``--seeds`` seeds (default 32, keys ``split(PRNGKey(0), seeds)``) vmapped
in one jit for 100k env steps with the per-environment defaults of
``npgjax.rl.get_config``, and reports how many seeds end at the target by

* the deterministic evaluation of the final policy (the mean return of the argmax /
  mean action) on ``--eval-final`` fresh episodes (default 100; training is unchanged),
* the training return (``train_return``: the mean of the last 20 training episodes), and
* the evaluation during training after the last update (``eval_return``, on the
  config's ``eval_episodes``, 10 by default),

each as a rate with its 95% Wilson score interval, plus the share of seeds whose
training return crossed the target at some point, and the machine (CPU model). Whether
one seed ends at the target changes with floating-point rounding (another CPU, another
result), so only the rate over many seeds, with its interval, says anything. Ten
episodes are a noisy estimate of a policy's return: on Pendulum policies at -173 to -210
on 100 episodes evaluated under -250 on 10 (``benchmarks/README.md``, session 27). So the
final policy is judged on 100.

    .venv/bin/python benchmarks/learning.py                       # all 6 rows, 32 seeds
    .venv/bin/python benchmarks/learning.py --env CartPole-v1 --algo npg --seeds 64
    .venv/bin/python benchmarks/learning.py --json results.json --curves curves.npz
    .venv/bin/python benchmarks/learning.py --set signal_power=2.0   # a candidate option
    .venv/bin/python benchmarks/learning.py --xla-defaults   # plain jax.jit: other rounding

Training is compiled with ``npgjax.rl.compiler_options()`` (on the CPU: LLVM O1, about
0.6x the compile time); ``--xla-defaults`` compiles with XLA's defaults instead, which
rounds differently: the same seeds end differently, as on another CPU.

``--curves`` saves every row's per-update curves (``train_return``, ``eval_return``,
``kl``, ``entropy``, the KL bound used, ...; seeds x updates) to look at the failing seeds.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import jax
import numpy as np
from _machine import cpu_model, load_average

from npgjax.rl import SOLVED_RETURNS, compiler_options, get_config, make_train, make_trainer

ENVS = ("CartPole-v1", "Pendulum-v1", "Acrobot-v1")


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a rate k/n."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))


CURVES = ("train_return", "eval_return", "kl", "entropy", "max_kl", "explained_variance",
          "ls_accepted", "ls_tries")


def run(env: str, algo: str, seeds: int, steps: int, overrides: dict,
        curves: dict | None = None, eval_final: int = 100, xla_defaults: bool = False) -> dict:
    cfg = get_config(env, algo, total_timesteps=steps, **overrides)
    train = jax.jit(jax.vmap(make_train(cfg)),
                    compiler_options=None if xla_defaults else compiler_options())
    keys = jax.random.split(jax.random.PRNGKey(0), seeds)
    t0 = time.perf_counter()
    compiled = train.lower(keys).compile()
    t1 = time.perf_counter()
    state, m = compiled(keys)
    ret = np.asarray(jax.block_until_ready(m["train_return"]), np.float64)
    t2 = time.perf_counter()
    extra = {}
    if eval_final:  # the final policy on more episodes (training is unchanged)
        evaluate = make_trainer(cfg.replace(eval_episodes=eval_final)).evaluate
        ev_n = np.asarray(jax.jit(jax.vmap(evaluate))(state)["eval_return"], np.float64)
        k_n = int(np.sum(ev_n >= SOLVED_RETURNS[env]))
        extra = {"eval_final_episodes": eval_final, "eval_final_at_target": k_n,
                 "eval_final_interval": wilson(k_n, seeds),
                 "eval_final_returns": [round(float(x), 1) for x in ev_n]}
    ev = np.asarray(m["eval_return"], np.float64)[:, -1]
    if curves is not None:
        for k in CURVES:
            curves[f"{env}/{algo}/{k}"] = np.asarray(m[k], np.float32)
    env_steps = np.asarray(m["env_steps"][0])
    target = SOLVED_RETURNS[env]
    with np.errstate(invalid="ignore"):
        crossed = [int(env_steps[np.argmax(r >= target)]) if np.any(r >= target) else None
                   for r in ret]
        k_eval, k_train = int(np.sum(ev >= target)), int(np.sum(ret[:, -1] >= target))
    return {
        "env": env, "algo": algo, "seeds": seeds, "env_steps": int(env_steps[-1]),
        "target": target,
        "eval_at_target": k_eval, "eval_interval": wilson(k_eval, seeds),
        "train_at_target": k_train, "train_interval": wilson(k_train, seeds),
        "crossed": sum(c is not None for c in crossed),
        "final_eval_returns": [round(float(x), 1) for x in ev],
        "final_train_returns": [round(float(x), 1) for x in ret[:, -1]],
        "first_crossing_steps": crossed,
        "compile_s": round(t1 - t0, 1), "train_s": round(t2 - t1, 1), **extra,
    }


def _rate(k: int, n: int, interval: tuple[float, float]) -> str:
    return f"{k}/{n} [{100 * interval[0]:.0f}-{100 * interval[1]:.0f}%]"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", choices=ENVS, action="append")
    p.add_argument("--algo", choices=["npg", "trpo", "vpg", "enac"], action="append")
    p.add_argument("--seeds", type=int, default=32)
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every row (Python literal values)")
    p.add_argument("--json", help="write the rows to this file")
    p.add_argument("--eval-final", type=int, default=100, metavar="N",
                   help="evaluate each seed's final policy on N fresh episodes (0: only the "
                        "evaluation during training)")
    p.add_argument("--curves", help="save the per-update curves of every row (npz) here")
    p.add_argument("--xla-defaults", action="store_true",
                   help="compile with XLA's default options, not npgjax.rl.compiler_options()")
    a = p.parse_args()
    from npgjax.cli.args import parse_set

    overrides = parse_set(a.set)
    envs, algos = a.env or list(ENVS), a.algo or ["npg", "trpo"]
    print(f"machine: {cpu_model()}, load {load_average()}, jax {jax.__version__} on "
          f"{jax.devices()[0].platform}; {a.seeds} seeds, {a.steps:,} env steps; compiler "
          f"options {'XLA defaults' if a.xla_defaults else compiler_options()}"
          + (f", overrides {overrides}" if overrides else ""))
    print("| env | algo | target |"
          + (f" eval on {a.eval_final} episodes at target [95% CI] |" if a.eval_final else "")
          + " train return at target [95% CI] | crossed in training | eval during training at "
          "target [95% CI] | compile / train s |")
    print("| --- | --- | --- | --- | --- | --- | --- |" + (" --- |" if a.eval_final else ""))
    rows, curves = [], ({} if a.curves else None)
    for env in envs:
        for algo in algos:
            r = run(env, algo, a.seeds, a.steps, overrides, curves, a.eval_final,
                    a.xla_defaults)
            final = (f" {_rate(r['eval_final_at_target'], a.seeds, r['eval_final_interval'])} |"
                     if a.eval_final else "")
            rows.append(r)
            print(f"| {env} | {algo} | {r['target']:g} |{final} "
                  f"{_rate(r['train_at_target'], a.seeds, r['train_interval'])} | "
                  f"{r['crossed']}/{a.seeds} | "
                  f"{_rate(r['eval_at_target'], a.seeds, r['eval_interval'])} | "
                  f"{r['compile_s']} / {r['train_s']} |", flush=True)
    if a.curves:
        np.savez_compressed(a.curves, **curves)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"machine": cpu_model(), "jax": jax.__version__,
                       "load_average": load_average(), "overrides": overrides,
                       "compiler_options": "XLA defaults" if a.xla_defaults
                       else compiler_options(), "rows": rows},
                      f, indent=1)


if __name__ == "__main__":
    main()
