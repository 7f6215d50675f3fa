"""Dense layers with ``lax.dot_general`` against ``npgjax.rl.dense_dot_general``.

JAX transposes ``x @ W`` with respect to ``W`` as ``(ct^T x)^T``; XLA folds the
transpose into one ``[in, out]`` dot, which its CPU backend runs slowly when ``out`` is
small and ``in`` is not (a policy head). ``dense_dot_general``, which npgjax's networks
use, keeps such a layer's gradient an ``[out, in]`` dot. This measures both in one
process, compiled with :func:`npgjax.rl.compiler_options` (LLVM O1):

* ``layers``: the weight gradient and the forward tangent of one dense layer on 1,024
  samples, for several widths (200 in a ``fori_loop``, microseconds each);
* ``update``: a chunk of 7 updates with the RL-zoo CartPole-v1 TRPO settings of
  ``compare_sb3.py``, one seed, on one device and with ``--shard tasks`` (two host
  devices), timed alternately in blocks of calls.

Every pair's outputs are checked bit for bit (a mismatch stops the script).

    .venv/bin/python benchmarks/dense_grad.py            # about 1 minute
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_mhz, cpu_model, load_average
from threefry import same_bits

WIDTHS = ((4, 64), (64, 64), (64, 3), (64, 2), (64, 1))
SAMPLES = 1024
LOOP = 200  # layer products per timed call
BLOCK = 5  # calls of one program in a row


@contextmanager
def plain_dense():
    """Trace npgjax's networks with ``lax.dot_general`` (flax's default) instead."""
    import jax

    from npgjax.rl import layers, networks

    saved = layers.dense_dot_general, networks.dense_dot_general
    layers.dense_dot_general = networks.dense_dot_general = jax.lax.dot_general
    try:
        yield
    finally:
        layers.dense_dot_general, networks.dense_dot_general = saved


def _time(programs: dict, args: tuple, calls: int) -> dict[str, float]:
    """Median ms per call of each program, called alternately in blocks of BLOCK."""
    import jax

    times: dict[str, list[float]] = {k: [] for k in programs}
    for _ in range(max(calls // BLOCK, 1)):
        for label, c in programs.items():
            for _ in range(BLOCK):
                t = time.perf_counter()
                jax.block_until_ready(c(*args))
                times[label].append(1e3 * (time.perf_counter() - t))
    return {k: statistics.median(v) for k, v in times.items()}


def _compiled_pair(name: str, make, args: tuple, jit_kw: dict | None = None) -> dict:
    """``make(dot_general)`` compiled with ``lax.dot_general`` and ``dense_dot_general``."""
    import jax

    from npgjax.rl import compiler_options, dense_dot_general

    progs = {}
    for label, dg in (("lax", jax.lax.dot_general), ("dense_dot_general", dense_dot_general)):
        progs[label] = jax.jit(make(dg), **(jit_kw or {})).lower(*args).compile(
            compiler_options())
    if not same_bits(*(jax.block_until_ready(c(*args)) for c in progs.values())):
        raise SystemExit(f"{name}: lax.dot_general and dense_dot_general disagree")
    return progs


def _layer_loops(dot_general, part: str, x):
    """200 weight gradients (or forward tangents) of ``x @ w``, each on a new input."""
    import jax
    import jax.numpy as jnp

    dims = (((1,), (0,)), ((), ()))

    def run(w, ct):
        _, tangent = jax.linearize(lambda w: dot_general(x, w, dims), w)
        grad = jax.linear_transpose(tangent, w)

        def step(i, c):
            s = 1 + 1e-7 * i  # nothing loop-invariant for XLA to hoist
            return c + (grad(ct * s)[0] if part == "grad" else tangent(w * s))

        return jax.lax.fori_loop(0, LOOP, step, jnp.zeros_like(w if part == "grad" else ct))

    return run


def layers(calls: int) -> list[dict]:
    import jax

    print("\n| in x out | weight gradient, lax us | dense_dot_general us | forward tangent, "
          "lax us | dense_dot_general us | same bits |\n| --- | --- | --- | --- | --- | --- |")
    rows = []
    for n_in, n_out in WIDTHS:
        kx, kw, kc = jax.random.split(jax.random.PRNGKey(0), 3)
        x = jax.random.normal(kx, (SAMPLES, n_in))
        args = (jax.random.normal(kw, (n_in, n_out)), jax.random.normal(kc, (SAMPLES, n_out)))
        row = {"in": n_in, "out": n_out}
        for part in ("grad", "tangent"):
            progs = _compiled_pair(f"{n_in}x{n_out} {part}",
                                   lambda dg, part=part, x=x: _layer_loops(dg, part, x), args)
            row[part] = {k: 1e3 * v / LOOP for k, v in _time(progs, args, calls).items()}
        print(f"| {n_in} x {n_out} | {row['grad']['lax']:.1f} | "
              f"{row['grad']['dense_dot_general']:.1f} | {row['tangent']['lax']:.1f} | "
              f"{row['tangent']['dense_dot_general']:.1f} | yes |", flush=True)
        rows.append(row)
    return rows


def _chunk(trainer, dot_general):
    """7 updates, traced with the networks' dense layers on ``dot_general``."""
    import jax

    from npgjax.rl.trainer import run_updates

    def chunk(state):
        if dot_general is jax.lax.dot_general:
            with plain_dense():
                return run_updates(trainer, state, 0, 7)
        return run_updates(trainer, state, 0, 7)

    return chunk


def updates(calls: int) -> dict:
    import jax
    from compare_sb3 import ENV_ID, NPGJAX_CONFIG

    from npgjax.rl import get_config, make_mesh, make_trainer
    from npgjax.rl.tasks import make_task_trainer

    cfg = dict(NPGJAX_CONFIG, hidden=tuple(NPGJAX_CONFIG["hidden"]))
    config = get_config(ENV_ID, "trpo", total_timesteps=100_000, **cfg)
    trainer = make_trainer(config)
    state = jax.jit(trainer.init)(jax.random.PRNGKey(0))
    mesh = make_mesh(2, "tasks")
    rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    tasks = make_task_trainer(config, mesh)
    print("\n| 7 updates | lax ms / update | dense_dot_general ms / update | ratio | "
          "same bits |\n| --- | --- | --- | --- | --- |")
    res = {}
    for name, tr, kw in (("one device", trainer, {}),
                         ("--shard tasks", tasks, {"in_shardings": rep, "out_shardings": rep})):
        progs = _compiled_pair(name, lambda dg, tr=tr: _chunk(tr, dg), (state,), kw)
        med = {k: v / 7 for k, v in _time(progs, (state,), calls).items()}
        print(f"| {name} | {med['lax']:.2f} | {med['dense_dot_general']:.2f} | "
              f"{med['dense_dot_general'] / med['lax']:.2f} | yes |", flush=True)
        res[name] = med
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=40, help="timed calls per program")
    p.add_argument("--json", help="write the results here")
    a = p.parse_args()
    import jax

    jax.config.update("jax_num_cpu_devices", 2)  # for --shard tasks
    print(f"machine: {cpu_model()} at {cpu_mhz()} MHz, {os.cpu_count()} CPUs, load "
          f"{load_average()}; jax {jax.__version__}")
    res = {"machine": cpu_model(), "layers": layers(max(a.calls // 4, BLOCK)),
           "updates": updates(a.calls)}
    print(f"load at end {load_average()}")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
