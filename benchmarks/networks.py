"""Networks on image observations: mlp against cnn on Breakout-MinAtar and Pong-misc.

Issue #8, item 3. For each environment (``get_config(env, "npg")`` defaults: 8 envs x
128 steps, CG 10, critic 10 epochs) and network, side by side in one process:

* **throughput**: env steps/s of whole jitted updates (rollout, GAE, natural step, critic
  fit), one seed, ``--chunk`` updates scanned per call, compiled ahead of time and run
  once as a warmup, then timed over ``--repeats`` calls interleaved setting by setting
  (median), as in ``throughput.py``;
* **learning at equal env steps**: ``--seeds`` seeds vmapped in one jit for the same
  ``total_timesteps`` per network (``--steps``, one per environment; 0 skips it); final
  ``train_return`` (mean of the last 20 training episodes of the stochastic policy) and
  ``eval_return`` (the deterministic policy on ``--eval-episodes`` fresh environments),
  mean +- std over seeds, at the quarter points of the run (evaluated there).

Networks:

* ``mlp``: ``network="mlp"`` (observations flattened; 64-64 tanh);
* ``cnn``: ``network="cnn"`` (``npgjax.rl.CNN``: conv16 3x3, stride 2 when the image is
  at least 20 pixels on a side, conv32 3x3 stride 2, then 64-64 relu; each convolution
  written as 3x3 patches and one matmul, ``npgjax.rl.networks.PatchConv``).

``--fvp-probe`` times one Fisher-vector product, alone and inside a ``fori_loop`` (as in
the conjugate-gradient loop of every natural step), for the mlp, the library cnn and the
same cnn built on ``flax.linen.Conv`` (equal outputs for equal weights): XLA's CPU
convolution is many times slower once linearised and transposed inside a loop, which is
why the library cnn is written as patches.

    .venv/bin/python benchmarks/networks.py                 # ~15 min on 2 busy cores
    .venv/bin/python benchmarks/networks.py --chunk 2 --repeats 5 --seeds 4 \
        --steps 51200 25600 --json out.json               # ~1 h on 2 busy cores
    .venv/bin/python benchmarks/networks.py --quick         # smoke test
    .venv/bin/python benchmarks/networks.py --fvp-probe     # the conv-in-a-loop cost
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

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_model, load_average

from npgjax.rl import CNN, MLP, get_config, make_train, make_trainer, orthogonal

ENVS = ("Breakout-MinAtar", "Pong-misc")
NETS = ("mlp", "cnn")


class FlaxConvCNN(nn.Module):
    """``npgjax.rl.CNN`` with ``flax.linen.Conv`` layers (the same function and params)."""

    out: int

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        lead = x.shape[:-3]
        x = x.reshape((-1,) + x.shape[-3:])
        s0 = 2 if min(x.shape[1:3]) >= 20 else 1
        for c, s in ((16, s0), (32, 2)):
            x = nn.relu(nn.Conv(c, (3, 3), strides=s, kernel_init=orthogonal(np.sqrt(2.0)))(x))
        return MLP((64, 64), self.out, "relu", 0.01)(x.reshape(lead + (-1,)))


def fvp_probe(shape: tuple[int, ...] = (10, 10, 4), n: int = 1024, loops: int = 4) -> None:
    """Seconds per analytic Fisher-vector product, alone and inside a ``fori_loop``."""
    from npgjax import Categorical, analytic_fisher_vector_product

    x = jax.random.normal(jax.random.PRNGKey(1), (n, *shape))
    for name, net in (("mlp", MLP((64, 64), 3, "tanh", 0.01, 3)),
                      ("cnn", CNN((64, 64), 3, "relu", 0.01)),
                      ("cnn on flax Conv", FlaxConvCNN(3))):
        params = net.init(jax.random.PRNGKey(0), x[:2])

        def fvp(p, x, net=net):
            dist_fn = lambda q, b: Categorical(net.apply(q, b))
            return analytic_fisher_vector_product(dist_fn, p, x, damping=0.1)

        once = jax.jit(lambda p, x, f=fvp: f(p, x)(p)).lower(params, x).compile()

        def in_loop(p, x, f=fvp):  # linearised once, then applied in the loop, as in CG
            product = f(p, x)
            return jax.lax.fori_loop(0, loops, lambda i, v: product(v), p)

        looped = jax.jit(in_loop).lower(params, x).compile()
        for label, fn, k in (("alone", once, 1), (f"in fori_loop x{loops}", looped, loops)):
            jax.block_until_ready(fn(params, x))
            t = time.perf_counter()
            jax.block_until_ready(fn(params, x))
            print(f"  {name} fvp {label}: {(time.perf_counter() - t) / k * 1e3:.1f} ms per "
                  f"product (batch {n} x {shape})", flush=True)


def build_throughput(env: str, net: str, chunk: int, warmup: bool) -> dict[str, Any]:
    config = get_config(env, "npg", total_timesteps=10**9, network=net)
    trainer = make_trainer(config)

    def run_chunk(state):
        return jax.lax.scan(lambda s, _: trainer.update(s), state, None, length=chunk)

    t = time.perf_counter()
    state = jax.jit(trainer.init)(jax.random.PRNGKey(0))
    fn = jax.jit(run_chunk).lower(state).compile()
    compile_s = time.perf_counter() - t
    t = time.perf_counter()
    if warmup:
        state, m = fn(state)
        jax.block_until_ready(m)
    return {"env": env, "net": net, "fn": fn, "state": state, "compile_s": compile_s,
            "steps": chunk * config.batch_size, "chunk": chunk, "times": [],
            "warmup_s": time.perf_counter() - t}


def throughput(envs, nets, chunk, repeats) -> list[dict[str, Any]]:
    rows = []
    for env in envs:
        for net in nets:
            r = build_throughput(env, net, chunk, warmup=True)
            r["repeats"] = repeats
            rows.append(r)
            print(f"  compiled {env} {net}: {r['compile_s']:.1f} s, warmup "
                  f"{r['warmup_s']:.1f} s", flush=True)
    for i in range(repeats):  # interleaved
        for r in rows:
            if i < r["repeats"]:
                t = time.perf_counter()
                r["state"], m = r["fn"](r["state"])
                jax.block_until_ready(m)
                r["times"].append(time.perf_counter() - t)
    out = []
    for r in rows:
        t = statistics.median(r["times"])
        out.append({"env": r["env"], "net": r["net"], "steps_per_s": r["steps"] / t,
                    "s_per_update": t / r["chunk"], "compile_s": r["compile_s"],
                    "times": r["times"], "updates_per_call": r["chunk"]})
    return out


def learning(env: str, net: str, steps: int, seeds: int, eval_episodes: int) -> dict[str, Any]:
    probe = get_config(env, "npg", total_timesteps=steps)
    n_up = probe.num_updates
    quarter = max(1, n_up // 4)
    cfg = get_config(env, "npg", total_timesteps=steps, network=net, eval_every=quarter,
                     eval_episodes=eval_episodes)
    train = jax.jit(jax.vmap(make_train(cfg)))
    keys = jax.random.split(jax.random.PRNGKey(0), seeds)
    t0 = time.perf_counter()
    compiled = train.lower(keys).compile()
    t1 = time.perf_counter()
    _, m = compiled(keys)
    m = jax.tree.map(np.asarray, jax.block_until_ready(m))
    t2 = time.perf_counter()
    env_steps = m["env_steps"][0]
    points = [min(q * quarter, n_up) - 1 for q in range(1, 5)]
    if points[-1] != n_up - 1:
        points[-1] = n_up - 1
    at = []
    for i in points:
        tr, ev = m["train_return"][:, i], m["eval_return"][:, i]
        at.append({"env_steps": int(env_steps[i]),
                   "train_return": [float(x) for x in tr],
                   "eval_return": [float(x) for x in ev]})
    return {"env": env, "net": net, "seeds": seeds, "env_steps": int(env_steps[-1]),
            "eval_every": quarter, "eval_episodes": eval_episodes, "at": at,
            "compile_s": t1 - t0, "train_s": t2 - t1,
            "steps_per_s": seeds * int(env_steps[-1]) / (t2 - t1)}


def _pm(values: list[float]) -> str:
    x = np.asarray(values, float)
    f = x[np.isfinite(x)]
    if not f.size:
        return "n/a"
    s = f"{f.mean():.2f} ± {f.std():.2f}"
    return s if f.size == x.size else s + f" ({f.size}/{x.size} seeds)"


def print_tables(header: str, thr: list[dict[str, Any]], learn: list[dict[str, Any]]) -> None:
    print(f"\n{header}\n")
    print("| env | network | env steps/s | s/update | compile s | vs mlp | updates timed |")
    print("|---|---|---:|---:|---:|---:|---:|")
    base = {r["env"]: r["steps_per_s"] for r in thr if r["net"] == "mlp"}
    for r in thr:
        ratio = r["steps_per_s"] / base[r["env"]] if r["env"] in base else float("nan")
        print(f"| {r['env']} | {r['net']} | {r['steps_per_s']:,.0f} | {r['s_per_update']:.3f} "
              f"| {r['compile_s']:.1f} | {ratio:.3f}x | "
              f"{r['updates_per_call']} x {len(r['times'])} |")
    if not learn:
        return
    print("\n| env | network | env steps | train_return | eval_return | train s |")
    print("|---|---|---:|---:|---:|---:|")
    for r in learn:
        for a in r["at"]:
            print(f"| {r['env']} | {r['net']} | {a['env_steps']:,} | {_pm(a['train_return'])} "
                  f"| {_pm(a['eval_return'])} | {r['train_s']:.0f} |")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a smoke test (tiny budgets)")
    p.add_argument("--envs", nargs="+", default=list(ENVS))
    p.add_argument("--chunk", type=int, default=1, help="updates per timed call")
    p.add_argument("--repeats", type=int, default=3, help="timed calls (0: no throughput)")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--steps", nargs="+", type=int, default=[24_576, 0],
                   help="learning budget per env in --envs order (env steps, the same for "
                        "every network; 0 = no learning run)")
    p.add_argument("--learn", nargs="+", default=list(NETS), choices=NETS)
    p.add_argument("--eval-episodes", type=int, default=8)
    p.add_argument("--fvp-probe", action="store_true",
                   help="only time one Fisher-vector product, alone and in a loop")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    args = p.parse_args(argv)
    if args.fvp_probe:
        print(f"{cpu_model()}, jax {jax.__version__}, load average {load_average()}")
        fvp_probe()
        return {}
    if args.quick:
        args.chunk, args.repeats, args.seeds, args.steps = 1, 2, 2, [2048, 2048]
        args.envs = ["Breakout-MinAtar"]
    dev = jax.devices()[0]
    header = (f"machine: {cpu_model()} ({platform.machine()}), cpu_count={os.cpu_count()}, "
              f"jax {jax.__version__}, device={dev.device_kind} ({dev.platform}), "
              f"load average at start {load_average()}")
    print(header, flush=True)
    thr = throughput(args.envs, NETS, args.chunk, args.repeats) if args.repeats else []
    print_tables(header, thr, [])
    learn = []
    for env, steps in zip(args.envs, args.steps, strict=False):
        for net in args.learn if steps else ():
            r = learning(env, net, steps, args.seeds, args.eval_episodes)
            learn.append(r)
            print(f"  learned {env} {net}: compile {r['compile_s']:.0f} s, train "
                  f"{r['train_s']:.0f} s; returns " + ", ".join(
                      f"{a['env_steps']}: train {_pm(a['train_return'])} eval "
                      f"{_pm(a['eval_return'])}" for a in r["at"]), flush=True)
    header += f"; at the end {load_average()}"
    print_tables(header, thr, learn)
    out = {"machine": header, "throughput": thr, "learning": learn}
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
