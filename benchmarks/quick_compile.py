"""``compiler_options(quick=True)`` against ``compiler_options()``: XLA time and run time.

``quick`` adds ``xla_cpu_use_fusion_emitters=False`` (XLA's older loop emitters) to the
CPU's LLVM O1. For each case a fresh process lowers one training chunk as the command
line does (``npgjax.cli.compile``: 5 updates, the flat state, threefry unrolled),
compiles it both ways (quick, or vmapped, first, so that any one-off start-up cost of
XLA falls on it), and times the two executables in alternating blocks of 2 calls from
the same state. As on the command line, one seed's plain chunk runs without vmap's
size-1 seed axis and the quick one keeps it (``npgjax.cli.compile._vmapped``).
``--vmap`` compares that plain one-seed chunk with the same vmapped (what the command
line ran before session 24), both with the default options. The trace columns time
lowering each, plain first: the second lowering finds JAX's caches warm (0.6-0.9 s less
for the same program), so they favour the other variant. A case is ``ENV:ALGO:SEEDS``
with ``:zoo`` for ``compare_sb3.py``'s RL-zoo TRPO settings and ``:tasks`` for the same
on two host devices (``--shard tasks``). The two compile to other kernels, so they round
differently; this times them, nothing else.

    .venv/bin/python benchmarks/quick_compile.py                  # about 4 minutes
    .venv/bin/python benchmarks/quick_compile.py --cases CartPole-v1:npg:1 --blocks 9
    .venv/bin/python benchmarks/quick_compile.py --vmap           # one-seed cases, 3 min
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_model, load_average

MARK = "RESULT_JSON "
CASES = ("CartPole-v1:trpo:1:zoo", "CartPole-v1:trpo:1:zoo:tasks", "CartPole-v1:npg:1",
         "Acrobot-v1:npg:1", "Pendulum-v1:npg:1", "MountainCar-v0:npg:1",
         "Catch-bsuite:npg:1", "DeepSea-bsuite:npg:1", "Breakout-MinAtar:npg:1",
         "CartPole-v1:npg:2", "CartPole-v1:npg:16")
K = 5  # updates per chunk


def worker(case: str, blocks: int, vmap: bool = False) -> dict:
    """Lower, compile both ways and time one case (in a fresh process); with ``vmap``
    the one-seed chunk with the default options, vmapped (``other``) and not."""
    env, algo, seeds, *flags = case.split(":")
    import jax

    if "tasks" in flags:
        jax.config.update("jax_num_cpu_devices", 2)
    import numpy as np

    from npgjax.cli.compile import _flat_programs, _lowered, _vmapped
    from npgjax.rl import compiler_options, get_config, make_mesh, make_trainer
    from npgjax.rl.tasks import make_task_trainer

    overrides = {}
    if "zoo" in flags:
        from compare_sb3 import _npgjax_overrides

        overrides = _npgjax_overrides({})
    config = get_config(env, algo, total_timesteps=1_000_000, **overrides)
    jit_kw, trainer = {}, make_trainer(config)
    if "tasks" in flags:
        mesh = make_mesh(2, "tasks")
        trainer = make_task_trainer(config, mesh)
        rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        jit_kw = {"in_shardings": rep, "out_shardings": rep}
    keys = jax.random.split(jax.random.PRNGKey(0), int(seeds))
    start = jax.ShapeDtypeStruct((), jax.numpy.int32)
    other = "vmapped" if vmap else "quick"
    quick = {other: not vmap, "plain": False}
    lowered, trace_s, vmapped = {}, {}, {}
    for name in ("plain", other):  # each as the command line lowers it
        vmapped[name] = vmap if name == other else _vmapped(
            keys, compiler_options(quick=quick[name]))
        t = time.perf_counter()
        flat_init, flat_chunk, shapes = _flat_programs(trainer, keys, K,
                                                       vmapped=vmapped[name])
        lowered[name], _ = _lowered(flat_chunk, jit_kw, [start, *jax.tree.leaves(shapes)],
                                    None)
        trace_s[name] = time.perf_counter() - t
    programs, xla_s = {}, {}
    for name in (other, "plain"):
        t = time.perf_counter()
        programs[name] = lowered[name].compile(compiler_options(quick=quick[name]) or None)
        xla_s[name] = time.perf_counter() - t
    init, _ = _lowered(flat_init, jit_kw, [keys], None)
    state0 = init.compile()(keys)
    state = {name: p(np.int32(0), *state0)[0] for name, p in programs.items()}  # warm up
    ms: dict[str, list[float]] = {name: [] for name in programs}
    for _ in range(blocks):
        for name, p in programs.items():
            t = time.perf_counter()
            for _ in range(2):
                state[name] = p(np.int32(1), *state[name])[0]
            jax.block_until_ready(state[name])
            ms[name].append((time.perf_counter() - t) / 2 / K * 1e3)
    med = {name: statistics.median(v) for name, v in ms.items()}
    return {"case": case, "trace_s": trace_s, "xla_s": xla_s, "ms_per_update": ms,
            "median_ms": med, "vmapped": vmapped,
            "other": other, "xla_ratio": xla_s[other] / xla_s["plain"],
            "trace_ratio": trace_s[other] / trace_s["plain"],
            "run_ratio": med[other] / med["plain"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="+", help="ENV:ALGO:SEEDS[:zoo][:tasks]")
    p.add_argument("--blocks", type=int, default=5, help="timed blocks of 2 calls per variant")
    p.add_argument("--vmap", action="store_true",
                   help="one seed's chunk vmapped against not, both with the default options")
    p.add_argument("--json", help="write the results here")
    a = p.parse_args()
    cases = a.cases or [c for c in CASES if not a.vmap or c.split(":")[2] == "1"]
    other = "vmapped" if a.vmap else "quick"
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs, load {load_average()}")
    print(f"| case | trace s plain | trace s {other} | XLA s plain | XLA s {other} | XLA ratio "
          f"| ms/update plain | ms/update {other} | run ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    results = []
    for case in cases:
        proc = subprocess.run([sys.executable, __file__, "--worker", case, str(a.blocks),
                               str(int(a.vmap))], capture_output=True, text=True, check=False)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARK)]
        if proc.returncode or not lines:
            raise RuntimeError(f"{case} failed:\n{proc.stderr[-3000:]}")
        r = json.loads(lines[-1][len(MARK):])
        results.append(r)
        x, m, tr = r["xla_s"], r["median_ms"], r["trace_s"]
        print(f"| {case} | {tr['plain']:.2f} | {tr[other]:.2f} | {x['plain']:.2f} | "
              f"{x[other]:.2f} | {r['xla_ratio']:.2f} | {m['plain']:.2f} | {m[other]:.2f} | "
              f"{r['run_ratio']:.2f} |", flush=True)
    print(f"load at end {load_average()}")
    if a.json:
        Path(a.json).write_text(json.dumps({"machine": cpu_model(), "results": results},
                                           indent=1))


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--worker":
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        print(MARK + json.dumps(worker(sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1")))
    else:
        main()
