"""Threefry lowered rolled (JAX's CPU default) against unrolled (``unrolled_threefry``).

On the CPU JAX lowers each threefry hash to a small while loop; the command line lowers
its programs inside :func:`npgjax.rl.xla.unrolled_threefry` instead, which gives the
same bits as straight-line code. This measures what that changes, both variants compiled
in one process (LLVM O1, :func:`npgjax.rl.compiler_options`) and timed alternately in
blocks of 10 calls, with the RL-zoo CartPole-v1 TRPO settings of ``compare_sb3.py`` (2
envs x 512 steps):

* ``rollout``: one rollout of 512 steps (``npgjax.rl.rollout.collect``), one seed;
* ``update``: a chunk of 7 updates, one seed, one device;
* ``update --shard tasks``: the same on two host devices (``npgjax.rl.tasks``).

Each pair's outputs are checked bit for bit (a mismatch stops the script). The 16-seed
vmapped run, compiled both ways in fresh processes: ``compile_time.py --unrolled``.

    .venv/bin/python benchmarks/threefry.py              # about 45 s
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_mhz, cpu_model, load_average

# Calls of one program in a row: alternating every call about doubled the rollout's
# time (both variants), as the caches and threads of one program go cold.
BLOCK = 10


def same_bits(a, b) -> bool:
    """Whether two pytrees of arrays are equal bit for bit (NaNs included)."""
    import jax
    import numpy as np

    return all(np.array_equal(x, y, equal_nan=True)
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def _pair(name: str, fn, args, reps: int, jit_kw: dict | None = None) -> dict:
    """Compile ``fn`` rolled and unrolled, check they agree bit for bit, time them
    alternately in blocks of ``BLOCK`` calls (``reps`` calls each); medians in ms."""
    import jax

    from npgjax.rl import compiler_options
    from npgjax.rl.xla import unrolled_threefry

    jit_kw = jit_kw or {}
    rolled = jax.jit(fn, **jit_kw).lower(*args).compile(compiler_options())
    with unrolled_threefry():
        lowered = jax.jit(lambda *a: fn(*a), **jit_kw).lower(*args)  # a new function
    unrolled = lowered.compile(compiler_options())
    whiles = [c.as_text().count(" while(") for c in (rolled, unrolled)]
    out = [jax.block_until_ready(c(*args)) for c in (rolled, unrolled)]
    if not same_bits(*out):
        raise SystemExit(f"{name}: rolled and unrolled threefry disagree")
    times: dict[str, list[float]] = {"rolled": [], "unrolled": []}
    for _ in range(max(reps // BLOCK, 1)):  # blocks of calls, as a training loop runs
        for label, c in (("rolled", rolled), ("unrolled", unrolled)):
            for _ in range(BLOCK):
                t = time.perf_counter()
                jax.block_until_ready(c(*args))
                times[label].append(1e3 * (time.perf_counter() - t))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"| {name} | {med['rolled']:.2f} | {med['unrolled']:.2f} | "
          f"{med['unrolled'] / med['rolled']:.2f} | {whiles[0]} / {whiles[1]} | yes |",
          flush=True)
    return {"median_ms": med, "while_loops": whiles, "reps": reps}


def in_process(reps: int) -> dict:
    import jax

    jax.config.update("jax_num_cpu_devices", 2)
    from compare_sb3 import ENV_ID, NPGJAX_CONFIG

    from npgjax.rl import get_config, make_mesh, make_trainer
    from npgjax.rl.rollout import collect
    from npgjax.rl.tasks import make_task_trainer
    from npgjax.rl.trainer import run_updates

    cfg = dict(NPGJAX_CONFIG, hidden=tuple(NPGJAX_CONFIG["hidden"]))
    config = get_config(ENV_ID, "trpo", total_timesteps=100_000, **cfg)
    trainer = make_trainer(config)
    state = jax.jit(trainer.init)(jax.random.PRNGKey(0))
    key = jax.random.PRNGKey(1)

    def rollout(state, key):
        carry = (state.env_state, state.obs, state.ep_return, state.ep_length)
        return collect(trainer.env, lambda o: trainer.model.dist(state.pi_params, o),
                       lambda o: o, carry, key, config.num_steps)

    print("| program | rolled ms | unrolled ms | ratio | while loops (rolled / unrolled) "
          "| same bits |")
    print("| --- | --- | --- | --- | --- | --- |")
    res = {"rollout": _pair("rollout, 512 steps x 2 envs", rollout, (state, key), reps)}
    res["update"] = _pair("7 updates, one device", lambda s: run_updates(trainer, s, 0, 7),
                          (state,), max(reps // 4, BLOCK))
    mesh = make_mesh(2, "tasks")
    tasks = make_task_trainer(config, mesh)
    rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    res["update_tasks"] = _pair("7 updates, --shard tasks",
                                lambda s: run_updates(tasks, s, 0, 7), (state,),
                                max(reps // 10, 3),
                                {"in_shardings": rep, "out_shardings": rep})
    for k in ("update", "update_tasks"):
        res[k]["per_update_ms"] = {v: t / 7 for v, t in res[k]["median_ms"].items()}
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=200, help="rollout calls per variant")
    p.add_argument("--json", help="write the results here")
    a = p.parse_args()
    import jax

    print(f"machine: {cpu_model()} at {cpu_mhz()} MHz, {os.cpu_count()} CPUs, load "
          f"{load_average()}; jax {jax.__version__}")
    res = {"machine": cpu_model(), "in_process": in_process(a.reps)}
    print(f"load at end {load_average()}")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
