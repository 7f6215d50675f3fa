"""Cold compile time of the 16-seed CartPole-v1 NPG run (issue 13), in fresh processes.

Each process imports npgjax, builds ``jax.jit(jax.vmap(make_train(get_config(
"CartPole-v1", "npg", total_timesteps=100_000))))`` over ``split(PRNGKey(0), 16)``,
and times the trace (``lower``), XLA's compile (no persistent cache) and the run. The
variants alternate, ``--repeat`` times, so that a noisy machine hits them alike:

* ``defaults``: XLA's default options (a plain ``jax.jit``);
* ``fast``: :func:`npgjax.rl.compiler_options` (on the CPU LLVM O1 instead of O3);
* ``quick`` (with ``--quick``): ``compiler_options(quick=True)`` (also XLA's older loop
  emitters; ``npgjax-train --quick-compile``; see ``quick_compile.py``);
* ``unrolled`` (with ``--unrolled``): ``fast``, lowered inside
  :func:`npgjax.rl.xla.unrolled_threefry`, as the command line lowers (see
  ``threefry.py``);
* ``cli`` and (with ``--quick`` too) ``cli-quick`` (with ``--cli``): the 16 seeds as
  ``npgjax-train --seeds 16 [--quick-compile]`` compiles them
  (:func:`npgjax.cli.compile.compile_training`: init cheaply in the main thread while a
  thread compiles a chunk of updates, both through ``jax.export``; no export directory,
  so nothing is written); the run is init and the chunks one after the other;
* ``baseline``: with ``--baseline PATH``, another npgjax source tree with XLA's
  defaults, e.g. the code issue 13 measured (``git worktree add /tmp/npgjax-89c29e2
  89c29e2``; it has no ``eval_return`` yet), imported through ``PYTHONPATH``.

    .venv/bin/python benchmarks/compile_time.py --repeat 3
    .venv/bin/python benchmarks/compile_time.py --repeat 3 --baseline /tmp/npgjax-89c29e2
    .venv/bin/python benchmarks/compile_time.py --repeat 2 --unrolled
    .venv/bin/python benchmarks/compile_time.py --repeat 2 --quick
    .venv/bin/python benchmarks/compile_time.py --repeat 3 --quick --cli --baseline DIR
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_model, load_average

ROOT = Path(__file__).resolve().parents[1]
MARK = "RESULT_JSON "

WORKER = """
import contextlib, json, sys, time
t0 = time.time()
import jax, numpy as np
import npgjax
from npgjax.rl import get_config, make_train
fast = sys.argv[1] in ("fast", "unrolled", "quick")
opts, lowering = None, contextlib.nullcontext()
if fast:
    from npgjax.rl import compiler_options
    opts = compiler_options(quick=True) if sys.argv[1] == "quick" else compiler_options()
if sys.argv[1] == "unrolled":
    from npgjax.rl.xla import unrolled_threefry
    lowering = unrolled_threefry()
cfg = get_config("CartPole-v1", "npg", total_timesteps=100_000)
keys = jax.random.split(jax.random.PRNGKey(0), int(sys.argv[2]))
t1 = time.time()
with lowering:
    lowered = jax.jit(jax.vmap(make_train(cfg))).lower(keys)
t2 = time.time()
compiled = lowered.compile(opts)
t3 = time.time()
_, m = jax.block_until_ready(compiled(keys))
t4 = time.time()
ret = np.asarray(m["train_return"] if "train_return" in m else m["return"])[:, -1]
print("RESULT_JSON " + json.dumps({"import_s": t1 - t0, "trace_s": t2 - t1,
      "xla_s": t3 - t2, "run_s": t4 - t3, "train_at_475": int((ret >= 475).sum()),
      "returns_sum": float(ret.sum()), "npgjax": npgjax.__file__}))
"""

# The command line's compile (``--cli``): trace = building the trainer and lowering both
# programs (init's lowering and compile overlap the chunk's XLA), XLA = the wait after.
WORKER_CLI = """
import json, sys, time
t0 = time.time()
import npgjax.cli.warm  # the command line's first import
import jax, numpy as np
import npgjax
from npgjax.rl import get_config, make_trainer
from npgjax.train import choose_chunk_updates, compile_training
overrides = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}  # tests shrink the run
overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
cfg = get_config("CartPole-v1", "npg", **{"total_timesteps": 100_000, **overrides})
keys = jax.random.split(jax.random.PRNGKey(0), int(sys.argv[2]))
t1 = time.time()
trainer = make_trainer(cfg)
K = choose_chunk_updates(cfg.num_updates)
t_built = time.time()
init, chunk, trace_s, xla_s, _ = compile_training(trainer, keys, K,
                                                  quick_compile=sys.argv[1] == "cli-quick")
t3 = time.time()
state = init(keys)
for i in range(cfg.num_updates // K):
    state, m = chunk(state, i * K)
ret = np.asarray(m["train_return"])[:, -1]
t4 = time.time()
print("RESULT_JSON " + json.dumps({"import_s": t1 - t0, "trace_s": t_built - t1 + trace_s,
      "xla_s": xla_s, "run_s": t4 - t3, "train_at_475": int((ret >= 475).sum()),
      "returns_sum": float(ret.sum()), "npgjax": npgjax.__file__, "chunk": K}))
"""


def run(variant: str, seeds: int, tree: Path, overrides: dict | None = None) -> dict:
    """One fresh process of ``variant``; ``overrides`` (config fields) for the ``cli``
    variants only, e.g. a shorter run in the tests."""
    env = dict(os.environ, PYTHONPATH=str(tree), JAX_PLATFORMS=os.environ.get(
        "JAX_PLATFORMS", "cpu"))
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    worker = WORKER_CLI if variant.startswith("cli") else WORKER
    extra = [json.dumps(overrides)] if overrides else []
    proc = subprocess.run([sys.executable, "-c", worker, variant, str(seeds), *extra], env=env,
                          capture_output=True, text=True, cwd="/", timeout=900)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARK)]
    if proc.returncode or not lines:
        raise RuntimeError(f"{variant} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len(MARK):])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--seeds", type=int, default=16)
    p.add_argument("--baseline", type=Path, help="another npgjax source tree (its root)")
    p.add_argument("--unrolled", action="store_true",
                   help="also the fast variant with threefry lowered unrolled")
    p.add_argument("--quick", action="store_true",
                   help="also compiler_options(quick=True) (--quick-compile)")
    p.add_argument("--cli", action="store_true",
                   help="also the command line's compile (cli; with --quick also cli-quick)")
    p.add_argument("--json", help="write the runs to this file")
    a = p.parse_args()
    variants = [("defaults", "defaults", ROOT), ("fast", "fast", ROOT)]
    if a.unrolled:
        variants.append(("unrolled", "unrolled", ROOT))
    if a.quick:
        variants.append(("quick", "quick", ROOT))
    if a.cli:
        variants += [(v, v, ROOT) for v in ("cli", "cli-quick")[:1 + a.quick]]
    if a.baseline:
        variants.insert(0, ("baseline", "defaults", a.baseline.resolve()))
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs, load {load_average()}; "
          f"{a.seeds} seeds of CartPole-v1 NPG, 100k env steps, no compilation cache")
    print("| variant | repeat | trace s | XLA compile s | trace + XLA s | run s | "
          "seeds at 475 (train) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    runs: dict[str, list[dict]] = {name: [] for name, _, _ in variants}
    for rep in range(a.repeat):
        for name, variant, tree in variants:
            r = run(variant, a.seeds, tree)
            assert Path(r["npgjax"]).is_relative_to(tree), (r["npgjax"], tree)
            runs[name].append(r)
            print(f"| {name} | {rep} | {r['trace_s']:.2f} | {r['xla_s']:.2f} | "
                  f"{r['trace_s'] + r['xla_s']:.2f} | {r['run_s']:.1f} | "
                  f"{r['train_at_475']}/{a.seeds} |", flush=True)
    med = {k: statistics.median(r["trace_s"] + r["xla_s"] for r in v) for k, v in runs.items()}
    print("\nmedian trace + XLA compile: " + ", ".join(f"{k} {v:.2f} s" for k, v in med.items()))
    for k in med:
        if k != "fast":
            print(f"fast / {k}: {med['fast'] / med[k]:.2f}")
    for k in ("quick", "cli", "cli-quick"):
        if k in med and "baseline" in med:
            print(f"{k} / baseline: {med[k] / med['baseline']:.2f}")
    if a.unrolled and {r["returns_sum"] for k in ("fast", "unrolled") for r in runs[k]} != {
            runs["fast"][0]["returns_sum"]}:
        raise SystemExit("fast and unrolled disagree: unrolled threefry changed the results")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"machine": cpu_model(), "seeds": a.seeds, "runs": runs,
                       "median_compile_s": med}, f, indent=1)


if __name__ == "__main__":
    main()
