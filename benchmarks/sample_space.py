"""Exact sample-space natural gradient against conjugate gradient on trajectory Fishers.

For a tanh MLP categorical policy (2 hidden layers, 8 observations, 4 actions) and N
trajectories of T=32 steps (ragged, lengths 16 to 32), the Fisher is the empirical
trajectory Fisher of ``npgjax.policy_log_prob_fn(..., per="trajectory")``, damped by
``lambda``, and the right-hand side is the policy gradient of the surrogate loss with
random per-step advantages (which is *not* in the span of the trajectory scores).
Variants, each one function compiled ahead of time with ``jax.jit`` and warmed up:

* ``exact``: :func:`npgjax.sample_space.sample_space_natural_gradient` (scores,
  ``N x N`` Gram matrix, Cholesky, one refinement step, and its own residual check
  with one Fisher-vector product, all included);
* ``CG 10`` / ``CG 50``: :func:`npgjax.conjugate_gradient` (``tol=0``, so exactly that
  many iterations) on :func:`npgjax.fisher_vector_product`, linearised inside the call.

The variants run interleaved (``exact, CG 10, CG 50``, the order rotating each repeat);
the time is the median over repeats (at least 3, until about ``--budget`` seconds per
case, at most 7). The relative residual ``||g - (F + lambda I) x|| / ||g||`` of each
float32 result is measured afterwards in float64 with a separate Fisher-vector product.

Run ``.venv/bin/python benchmarks/sample_space.py`` (3.5 minutes of CPU time on 2 cores),
``--quick`` for a smoke test.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import npgjax
from npgjax.sample_space import sample_space_natural_gradient

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_model, load_average

OBS, ACTS, T = 8, 4, 32


def mlp(layers, x):
    for layer in layers[:-1]:
        x = jnp.tanh(x @ layer["w"] + layer["b"])
    return x @ layers[-1]["w"] + layers[-1]["b"]


def policy(params, obs):
    return npgjax.Categorical(mlp(params, obs))


def problem(n: int, width: int, seed: int = 0):
    """``(params, batch, grads)`` with ``grads`` the surrogate-loss policy gradient."""
    rng = np.random.default_rng(seed)
    sizes = (OBS, width, width, ACTS)
    params = [
        {
            "w": jnp.asarray(
                rng.normal(size=(i, o)) / np.sqrt(i) * (0.1 if o == ACTS else 1.0), jnp.float32
            ),
            "b": jnp.asarray(0.01 * rng.normal(size=o), jnp.float32),
        }
        for i, o in itertools.pairwise(sizes)
    ]
    lengths = rng.integers(T // 2, T + 1, size=n)
    batch = {
        "obs": jnp.asarray(rng.normal(size=(n, T, OBS)), jnp.float32),
        "actions": jnp.asarray(rng.integers(0, ACTS, size=(n, T))),
        "mask": jnp.asarray(np.arange(T)[None] < lengths[:, None], jnp.float32),
    }
    adv = jnp.asarray(rng.normal(size=(n, T)), jnp.float32) * batch["mask"]

    def surrogate(p):
        return jnp.sum(policy(p, batch["obs"]).log_prob(batch["actions"]) * adv) / n

    return params, batch, jax.grad(surrogate)(params)


LOG_PROB = npgjax.policy_log_prob_fn(policy, per="trajectory")


def variants(lam: float):
    def exact(p, b, g):
        return sample_space_natural_gradient(LOG_PROB, p, b, g, damping=lam)[0]

    def cg(iters):
        def run(p, b, g):
            fvp = npgjax.fisher_vector_product(LOG_PROB, p, b, damping=lam)
            return npgjax.conjugate_gradient(fvp, g, max_iters=iters, tol=0.0)[0]

        return run

    return {"exact": exact, "CG 10": cg(10), "CG 50": cg(50)}


def relative_residual(params, batch, g, x, lam: float) -> float:
    with jax.enable_x64(True):
        f64 = lambda t: jax.tree.map(
            lambda a: jnp.asarray(a, jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a, t
        )
        p, b, g, x = f64(params), f64(batch), f64(g), f64(x)
        fvp = npgjax.fisher_vector_product(LOG_PROB, p, b, damping=lam)
        r = jax.tree.map(jnp.subtract, g, fvp(x))
        norm = lambda t: float(jnp.sqrt(sum(jnp.vdot(a, a) for a in jax.tree.leaves(t))))
        return norm(r) / norm(g)


def run_case(n: int, width: int, lam: float, budget: float) -> dict:
    params, batch, g = problem(n, width)
    compiled, out = {}, {}
    for name, fn in variants(lam).items():
        compiled[name] = jax.jit(fn).lower(params, batch, g).compile()
        out[name] = jax.block_until_ready(compiled[name](params, batch, g))  # warmup
    names, times = list(compiled), {k: [] for k in compiled}
    t_start = time.perf_counter()
    for r in range(7):
        if r >= 3 and time.perf_counter() - t_start > budget:
            break
        order = names[r % 3 :] + names[: r % 3]
        for name in order if r % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            jax.block_until_ready(compiled[name](params, batch, g))
            times[name].append(time.perf_counter() - t0)
    n_params = sum(a.size for a in jax.tree.leaves(params))
    row = {"N": n, "P": int(n_params), "damping": lam, "repeats": len(times["exact"])}
    for name in names:
        row[name] = {
            "ms": 1e3 * statistics.median(times[name]),
            "rel_residual": relative_residual(params, batch, g, out[name], lam),
        }
    return row


def print_table(rows: list[dict]) -> None:
    print(
        "| damping | N | P | exact ms | exact res. | CG 10 ms | CG 10 res. | CG 50 ms "
        "| CG 50 res. | exact vs CG 50 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        e, c10, c50 = r["exact"], r["CG 10"], r["CG 50"]
        print(
            f"| {r['damping']:g} | {r['N']} | {r['P']:,} | {e['ms']:.1f} | "
            f"{e['rel_residual']:.1e} | {c10['ms']:.1f} | {c10['rel_residual']:.1e} | "
            f"{c50['ms']:.1f} | {c50['rel_residual']:.1e} | {c50['ms'] / e['ms']:.1f}x faster |"
        )


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, a smoke test")
    ap.add_argument("--damping", type=float, nargs="+", default=[1e-3, 1e-1])
    ap.add_argument("--budget", type=float, default=8.0, help="seconds of repeats per case")
    ap.add_argument("--json", type=Path, help="save the rows here")
    args = ap.parse_args(argv)
    ns, widths = ((8, 32), (16, 64)) if args.quick else ((16, 64, 256), (93, 309))
    print(
        f"CPU: {cpu_model()}; jax {jax.__version__}; {jax.devices()[0].platform}; "
        f"load {load_average()}; T={T}, float32"
    )
    rows = []
    for lam, width, n in itertools.product(args.damping, widths, ns):
        rows.append(run_case(n, width, lam, 1.0 if args.quick else args.budget))
        print(f"  done: damping {lam:g}, N {n}, P {rows[-1]['P']:,}", flush=True)
    print()
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_model(), "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
