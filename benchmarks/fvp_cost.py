"""Cost of a Fisher-vector product relative to one gradient, measured side by side.

For a tanh MLP policy (two hidden layers) and a batch of states, every variant below
is one function compiled ahead of time with ``jax.jit``, run once as a warmup, then
timed with ``block_until_ready``. The variants are interleaved: each repeat runs
``grad, A, grad, B, grad, ...`` (the order rotates from repeat to repeat), and each
sample of a variant is divided by the mean of the two gradient samples around it, so
that the load of a shared machine hits the variant and its baseline alike. ``ratio``
is the median over repeats of that quotient (quartiles in brackets); ``cpu`` is the
same median for process CPU time (all threads), which other jobs on the machine
disturb much less than wall time, though it also counts XLA's worker threads spinning.

Rows of the table, for each problem size:

* ``gradient``: ``jax.grad`` of the surrogate loss (the 1.00x baseline).
* ``KL HVP, double backprop``: the Hessian-vector product of the mean
  ``KL(pi_old || pi_theta)`` (``pi_old`` stop-gradiented) that PyTorch TRPO codes use,
  reverse over reverse: ``g = grad(kl)``, ``hvp = grad(th -> <g(th), v>)``.
* ``empirical FVP``: :func:`npgjax.fisher_vector_product` built and applied once
  (linearisation inside the call: forward + jvp + transposed jvp).
* ``analytic FVP``: :func:`npgjax.analytic_fisher_vector_product`, likewise.
* ``CG iteration``: the marginal cost of one conjugate-gradient iteration with the
  linearisation reused, ``(t(CG 20 its) - t(CG 10 its)) / 10``, each CG a single jitted
  :func:`npgjax.conjugate_gradient` (``tol=0``) on an operator built once inside it.
  Also for the double-backprop KL HVP with its first backward pass kept
  (``jax.vjp`` of ``jax.grad(kl)`` built once, as sb3-contrib keeps ``grad_kl``).
* ``natural step``: gradient + :func:`npgjax.precondition_by_fisher` (``max_kl=0.01``,
  ``cg_iters=10``, ``cg_tol=0``) in one jit.

Run ``.venv/bin/python benchmarks/fvp_cost.py`` (2 to 4 minutes on 2 CPU cores: a
case stops repeating after about 40 s of timing, once it has 3 repeats; at most 7),
``--quick`` for a smoke test (20 s to a minute), ``--json PATH`` to save the results.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import npgjax

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_model, load_average

TARGET_CG_ITER = 1.1  # one CG iteration <= 1.1x a gradient
TARGET_STEP = 12.0  # whole natural step <= 12x a gradient
MAX_KL = 0.01
STEP_CG_ITERS = 10
DAMPING = 1e-3  # sb3-contrib's TRPO damping (npgjax's default is 0.1), used in the CG rows too


@dataclass(frozen=True)
class Case:
    name: str
    head: str  # "categorical" or "gaussian"
    batch: int
    width: int
    obs_dim: int
    act_dim: int


DEFAULT_CASES = (
    Case("cartpole-like", "categorical", 4096, 64, 4, 2),
    Case("cartpole-like", "categorical", 16384, 256, 4, 2),
    Case("pendulum-like", "gaussian", 4096, 64, 3, 1),
)
QUICK_CASES = (
    Case("cartpole-like", "categorical", 512, 32, 4, 2),
    Case("pendulum-like", "gaussian", 512, 32, 3, 1),
)


# ---------------------------------------------------------------- problem


def init_params(key: jax.Array, case: Case) -> dict[str, Any]:
    out_dim = case.act_dim
    sizes = (case.obs_dim, case.width, case.width, out_dim)
    layers = []
    keys = jax.random.split(key, len(sizes) - 1)
    for k, (i, o) in zip(keys, itertools.pairwise(sizes), strict=True):
        kw, kb = jax.random.split(k)
        scale = 1.0 if o != out_dim else 0.1  # a small policy head, as in PPO/TRPO codes
        layers.append(
            {
                "w": scale * jax.random.normal(kw, (i, o)) / np.sqrt(i),
                "b": 0.01 * jax.random.normal(kb, (o,)),
            }
        )
    params: dict[str, Any] = {"layers": layers}
    if case.head == "gaussian":
        params["log_std"] = jnp.full((case.act_dim,), -0.5)
    return params


def mlp(layers: list[dict[str, jax.Array]], x: jax.Array) -> jax.Array:
    for layer in layers[:-1]:
        x = jnp.tanh(x @ layer["w"] + layer["b"])
    return x @ layers[-1]["w"] + layers[-1]["b"]


def make_problem(case: Case, seed: int = 0):
    """``(params, batch, dist_fn, log_prob_fn, loss_fn)`` for one case."""

    def dist_fn(params, batch):
        out = mlp(params["layers"], batch["obs"])
        if case.head == "categorical":
            return npgjax.Categorical(out)
        return npgjax.DiagGaussian(out, params["log_std"])

    def log_prob_fn(params, batch):
        return dist_fn(params, batch).log_prob(batch["actions"])

    def loss_fn(params, batch):
        return npgjax.surrogate_loss(log_prob_fn(params, batch), batch["old_logp"], batch["adv"])

    k_par, k_obs, k_act, k_adv = jax.random.split(jax.random.PRNGKey(seed), 4)
    params = init_params(k_par, case)
    obs = jax.random.normal(k_obs, (case.batch, case.obs_dim))
    batch = {"obs": obs}
    actions = dist_fn(params, batch).sample(k_act)
    batch["actions"] = actions
    batch["old_logp"] = log_prob_fn(params, batch)
    batch["adv"] = jax.random.normal(k_adv, (case.batch,))
    return params, batch, dist_fn, log_prob_fn, loss_fn


def num_params(params: Any) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


# ---------------------------------------------------------------- variants


def build_variants(params, batch, dist_fn, log_prob_fn, loss_fn):
    """Name -> (jitted function, args); plus the CG functions whose iterations are checked."""
    kl_fn = npgjax.mean_kl(dist_fn)  # mean KL(stop_gradient(pi(old)) || pi(new))
    emp = npgjax.empirical_fisher(log_prob_fn)
    ana = npgjax.analytic_fisher(dist_fn)

    def grad(p, b):
        return jax.grad(loss_fn)(p, b)

    def kl_hvp(p, b, v):
        # PyTorch TRPO: kl = mean KL(pi_old.detach() || pi); g = autograd.grad(kl,
        # create_graph=True); hvp = autograd.grad(g . v). Reverse over reverse.
        g = jax.grad(lambda th: kl_fn(th, th, b))
        return jax.grad(lambda th: npgjax.tree_vdot(g(th), v))(p)

    def emp_fvp(p, b, v):
        return npgjax.fisher_vector_product(log_prob_fn, p, b)(v)

    def ana_fvp(p, b, v):
        return npgjax.analytic_fisher_vector_product(dist_fn, p, b)(v)

    def kl_operator(p, b):
        # The first backward pass kept, as sb3-contrib keeps grad_kl (create_graph=True):
        # each product is one more reverse pass through it (H is symmetric, so v^T H = H v).
        _, pullback = jax.vjp(jax.grad(lambda th: kl_fn(th, th, b)), p)
        return lambda v: pullback(v)[0]

    makers = {"emp": emp, "ana": ana, "kl": kl_operator}

    def cg(kind: str, iters: int):
        def run(p, b, g):
            matvec = npgjax.damped(makers[kind](p, b), DAMPING)
            return npgjax.conjugate_gradient(matvec, g, max_iters=iters, tol=0.0)

        return jax.jit(run)

    def step(fisher_kwargs: dict[str, Any]):
        tx = npgjax.precondition_by_fisher(
            **fisher_kwargs, max_kl=MAX_KL, cg_iters=STEP_CG_ITERS, cg_tol=0.0
        )

        def run(p, b):
            g = jax.grad(loss_fn)(p, b)
            return tx.update(g, tx.init(p), p, batch=b)

        return jax.jit(run)

    g0 = jax.jit(grad)(params, batch)
    v = jax.tree.map(lambda x: x / (1e-8 + jnp.sqrt(jnp.sum(x * x))), g0)
    fb = (params, batch)
    variants: dict[str, tuple[Callable, tuple]] = {
        "grad": (jax.jit(grad), fb),
        "kl_hvp": (jax.jit(kl_hvp), (*fb, v)),
        "emp_fvp": (jax.jit(emp_fvp), (*fb, v)),
        "ana_fvp": (jax.jit(ana_fvp), (*fb, v)),
    }
    for kind, iters in itertools.product(("emp", "ana", "kl"), (10, 20)):
        variants[f"{kind}_cg{iters}"] = (cg(kind, iters), (*fb, g0))
    variants["emp_step"] = (step({"log_prob_fn": log_prob_fn}), fb)
    variants["ana_step"] = (step({"dist_fn": dist_fn}), fb)
    return variants


def prepare(variants) -> tuple[dict[str, tuple[Callable, tuple]], dict[str, float], dict]:
    """Compile every variant ahead of time and run it once.

    Returns the compiled variants, the seconds of that first (post-compile) call, and
    checks: the CG iteration counts are exact, and the analytic FVP equals the KL HVP.
    """
    compiled, first, out = {}, {}, {}
    for name, (fn, args) in variants.items():
        exe = fn.lower(*args).compile()
        t0 = time.perf_counter()
        out[name] = jax.block_until_ready(exe(*args))
        first[name] = time.perf_counter() - t0
        compiled[name] = (exe, args)
    for name, res in out.items():
        if "_cg" in name:
            want = int(name.split("_cg")[1])
            got = int(res[1].iterations)
            if got != want:
                raise RuntimeError(f"{name}: CG ran {got} iterations, expected {want}.")
        if name.endswith("_step"):
            state = res[1]
            if int(state.cg_iterations) != STEP_CG_ITERS or bool(state.skipped):
                raise RuntimeError(f"{name}: unexpected step state {state}.")
    flat = lambda t: jax.flatten_util.ravel_pytree(t)[0]
    hvp = flat(out["kl_hvp"])
    rel = lambda a: float(jnp.linalg.norm(a - hvp) / jnp.linalg.norm(hvp))
    checks = {
        "analytic_fvp_vs_kl_hvp_rel_err": rel(flat(out["ana_fvp"])),
        "empirical_fvp_vs_kl_hvp_rel_err": rel(flat(out["emp_fvp"])),
    }
    return compiled, first, checks


# ---------------------------------------------------------------- timing


def time_interleaved(
    variants,
    first: dict[str, float],
    repeats: int,
    sample_s: float,
    budget_s: float,
    min_repeats: int,
) -> dict[str, dict[str, list[float]]]:
    """Interleaved timings: every sample of a variant sits between two gradient samples.

    A sample is ``n`` back-to-back calls (each ``block_until_ready``), ``n`` chosen from
    the first call so that a sample lasts about ``sample_s``. A repeat runs
    ``grad, A, grad, B, grad, ...`` over all variants, in an order rotated (and reversed
    every other repeat) from one repeat to the next, so that each variant is compared
    with the gradient measured just before and just after it. Repeats stop at
    ``repeats``, or once ``min_repeats`` are done and the loop has run ``budget_s``.

    Returns, per variant, per-call wall and process-CPU seconds of each sample and the
    mean of the two gradient samples around it (``grad_wall``, ``grad_cpu``).
    """
    inner = {n: max(1, min(200, round(sample_s / max(t, 1e-6)))) for n, t in first.items()}

    def sample(name: str) -> tuple[float, float]:
        fn, args = variants[name]
        n = inner[name]
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(n):
            jax.block_until_ready(fn(*args))
        return (time.perf_counter() - t0) / n, (time.process_time() - c0) / n

    others = [name for name in variants if name != "grad"]
    keys = ("wall", "cpu", "grad_wall", "grad_cpu")
    res: dict[str, dict[str, list[float]]] = {n: {k: [] for k in keys} for n in variants}
    t_loop = time.perf_counter()
    for r in range(repeats):
        if r >= min_repeats and time.perf_counter() - t_loop > budget_s:
            break
        order = others[r % len(others) :] + others[: r % len(others)]
        if r % 2:
            order = order[::-1]
        g_before = sample("grad")
        for name in order:
            t = sample(name)
            g_after = sample("grad")
            for key, value in (
                ("wall", t[0]),
                ("cpu", t[1]),
                ("grad_wall", 0.5 * (g_before[0] + g_after[0])),
                ("grad_cpu", 0.5 * (g_before[1] + g_after[1])),
            ):
                res[name][key].append(value)
            res["grad"]["wall"].append(g_after[0])
            res["grad"]["cpu"].append(g_after[1])
            g_before = g_after
    return res


def summarize(res: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, float]]:
    """Ratios to the neighbouring gradient samples: median and quartiles over repeats.

    ``ratio`` (wall clock) is what the targets are about; ``cpu`` is the same ratio of
    process CPU time (all threads), which is much less disturbed by other jobs on the
    machine than wall time but also counts the worker threads' spinning.
    """
    ratios: dict[str, dict[str, np.ndarray]] = {}
    for name, d in res.items():
        if name == "grad":
            continue
        ratios[name] = {
            "wall": np.asarray(d["wall"]) / np.asarray(d["grad_wall"]),
            "cpu": np.asarray(d["cpu"]) / np.asarray(d["grad_cpu"]),
        }
    for kind in ("emp", "ana", "kl"):
        r10, r20 = ratios[f"{kind}_cg10"], ratios[f"{kind}_cg20"]
        ratios[f"{kind}_cg_iter"] = {k: (r20[k] - r10[k]) / 10 for k in ("wall", "cpu")}
    out = {"grad": {"ratio": 1.0, "ratio_q1": 1.0, "ratio_q3": 1.0, "cpu": 1.0}}
    for name, r in ratios.items():
        q1, med, q3 = np.percentile(r["wall"], [25, 50, 75])
        out[name] = {
            "ratio": float(med),
            "ratio_q1": float(q1),
            "ratio_q3": float(q3),
            "cpu": float(np.median(r["cpu"])),
        }
    for name, d in res.items():
        out[name]["ms"] = 1e3 * float(np.median(d["wall"]))
    return out


# ---------------------------------------------------------------- report

ROWS = (
    ("grad", "gradient of the surrogate loss", None),
    ("kl_hvp", "KL HVP, double backprop (per call)", None),
    ("emp_fvp", "empirical FVP, linearised in the call", None),
    ("ana_fvp", "analytic FVP, linearised in the call", None),
    ("emp_cg_iter", "CG iteration, empirical (linearisation reused)", TARGET_CG_ITER),
    ("ana_cg_iter", "CG iteration, analytic (linearisation reused)", TARGET_CG_ITER),
    ("kl_cg_iter", "CG iteration, KL HVP (first backward reused)", None),
    ("emp_step", "natural step, empirical (grad + 10 CG its)", TARGET_STEP),
    ("ana_step", "natural step, analytic (grad + 10 CG its)", TARGET_STEP),
)



def machine_info() -> dict[str, Any]:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    return {
        "platform.processor": platform.processor(),
        "cpu_model": cpu_model(),
        "machine": platform.machine(),
        "os": platform.platform(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable,
        "python": platform.python_version(),
        "jax": jax.__version__,
        "devices": [str(d) for d in jax.devices()],
        "load_average_at_start": load_average(),
    }



def print_case(case: Case, n_params: int, summary, checks, repeats: int, secs: float) -> None:
    unit = "actions" if case.head == "categorical" else "action dim"
    print(
        f"\n== {case.name}, {case.head} head: batch {case.batch}, width {case.width} "
        f"(2 hidden tanh), obs {case.obs_dim}, {case.act_dim} {unit}, {n_params} params"
    )
    print(f"{'':48} {'ratio':>7} {'[q1, q3]':>14} {'cpu':>7} {'ms':>9}  target")
    for key, label, target in ROWS:
        s = summary[key]
        ms = f"{s['ms']:9.2f}" if "ms" in s else " " * 9
        tgt = ""
        if target is not None:
            tgt = f"<= {target:g}x {'ok' if s['ratio'] <= target else 'MISSED'}"
        q = f"[{s['ratio_q1']:.2f}, {s['ratio_q3']:.2f}]"
        print(f"{label:48} {s['ratio']:6.2f}x {q:>14} {s['cpu']:6.2f}x {ms}  {tgt}".rstrip())
    cg_ms = ", ".join(
        f"{k} {summary[f'{k}_cg10']['ms']:.1f} / {summary[f'{k}_cg20']['ms']:.1f}"
        for k in ("emp", "ana", "kl")
    )
    print(f"CG 10 / 20 iterations, ms per call: {cg_ms}")
    print(
        f"{repeats} interleaved repeats, {secs:.0f} s; relative difference of the analytic "
        f"FVP and the KL HVP: {checks['analytic_fvp_vs_kl_hvp_rel_err']:.1e}"
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument(
        "--repeats", type=int, default=None, help="interleaved repeats (default 7, quick 3)"
    )
    args = parser.parse_args(argv)
    cases = QUICK_CASES if args.quick else DEFAULT_CASES
    repeats = args.repeats or (3 if args.quick else 7)
    min_repeats = min(repeats, 3)
    sample_s = 0.01 if args.quick else 0.05
    budget_s = 5.0 if args.quick else 40.0  # per case: fewer repeats (>= 3) past this

    info = machine_info()
    print("npgjax benchmark: cost of a Fisher-vector product relative to one gradient")
    print(
        f"machine: {info['cpu_model']} ({info['machine']}), platform.processor="
        f"{info['platform.processor']!r}, cpu_count={info['cpu_count']}, usable="
        f"{info['usable_cpus']}, jax {info['jax']}, devices={info['devices']}"
    )
    print(f"load average (1, 5, 15 min) at start: {info['load_average_at_start']}")
    print(
        f"float32; damping {DAMPING:g} in the CG rows and the step; step: "
        f"precondition_by_fisher(max_kl={MAX_KL}, cg_iters={STEP_CG_ITERS}, cg_tol=0.0)"
    )
    results: dict[str, Any] = {
        "machine": info,
        "settings": {
            "max_repeats": repeats,
            "sample_s": sample_s,
            "budget_s": budget_s,
            "max_kl": MAX_KL,
            "step_cg_iters": STEP_CG_ITERS,
            "damping": DAMPING,
            "dtype": "float32",
        },
        "cases": [],
    }
    t_start = time.perf_counter()
    for case in cases:
        t_case = time.perf_counter()
        params, batch, dist_fn, log_prob_fn, loss_fn = make_problem(case)
        variants = build_variants(params, batch, dist_fn, log_prob_fn, loss_fn)
        variants, first, checks = prepare(variants)
        times = time_interleaved(variants, first, repeats, sample_s, budget_s, min_repeats)
        summary = summarize(times)
        n_params = num_params(params)
        n_rep = len(times["emp_fvp"]["wall"])
        print_case(case, n_params, summary, checks, n_rep, time.perf_counter() - t_case)
        results["cases"].append(
            {
                "case": case.__dict__,
                "num_params": n_params,
                "repeats": n_rep,
                "summary": summary,
                "samples_s": times,
                "checks": checks,
                "targets": {
                    "cg_iter": TARGET_CG_ITER,
                    "natural_step": TARGET_STEP,
                },
            }
        )
    elapsed = time.perf_counter() - t_start
    results["elapsed_s"] = elapsed
    results["load_average_at_end"] = load_average()
    print(f"\ntotal time {elapsed:.0f} s; load average at end: {results['load_average_at_end']}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
        print(f"wrote {args.json}")
    return results


if __name__ == "__main__":
    main()
