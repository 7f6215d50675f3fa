"""Cost of a Fisher-vector product relative to one gradient, measured side by side.

For a tanh MLP policy (two hidden layers) and a batch of states, every variant below
is one jitted function, timed with ``block_until_ready`` after a warmup; the variants
are interleaved within each repeat (the order rotates from repeat to repeat) so that
the noise of a shared machine hits all of them alike, and each ratio is the median
over repeats of (variant time / gradient time in the same repeat).

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

Run ``.venv/bin/python benchmarks/fvp_cost.py`` (about 3 minutes on 2 CPU cores),
``--quick`` for a smoke test, ``--json PATH`` to save the results.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
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

TARGET_CG_ITER = 1.1  # one CG iteration <= 1.1x a gradient
TARGET_STEP = 12.0  # whole natural step <= 12x a gradient
MAX_KL = 0.01
STEP_CG_ITERS = 10
DAMPING = 1e-3  # precondition_by_fisher's default, used in the CG rows too


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


def build_variants(case: Case, params, batch, dist_fn, log_prob_fn, loss_fn):
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


def check_variants(variants) -> dict[str, Any]:
    """Compile every variant, check the CG iteration counts and that the products agree."""
    out = {name: jax.block_until_ready(fn(*args)) for name, (fn, args) in variants.items()}
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
    return {
        "analytic_fvp_vs_kl_hvp_rel_err": rel(flat(out["ana_fvp"])),
        "empirical_fvp_vs_kl_hvp_rel_err": rel(flat(out["emp_fvp"])),
    }


# ---------------------------------------------------------------- timing


def time_interleaved(variants, repeats: int, sample_s: float) -> dict[str, list[float]]:
    """Per-call seconds of every variant in each repeat, variants interleaved."""
    names = list(variants)
    inner = {}
    for name in names:  # calibrate: enough calls per sample to last about sample_s
        fn, args = variants[name]
        jax.block_until_ready(fn(*args))
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        dt = time.perf_counter() - t0
        inner[name] = max(1, min(200, round(sample_s / max(dt, 1e-6))))
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        if r % 2:
            order = order[::-1]
        for name in order:
            fn, args = variants[name]
            n = inner[name]
            t0 = time.perf_counter()
            for _ in range(n):
                jax.block_until_ready(fn(*args))
            times[name].append((time.perf_counter() - t0) / n)
    return times


def summarize(times: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Median and quartiles of per-repeat ratios to the gradient of the same repeat."""
    grad = np.asarray(times["grad"])
    per_repeat: dict[str, np.ndarray] = {}
    for name, ts in times.items():
        per_repeat[name] = np.asarray(ts) / grad
    for kind in ("emp", "ana", "kl"):
        t10, t20 = np.asarray(times[f"{kind}_cg10"]), np.asarray(times[f"{kind}_cg20"])
        per_repeat[f"{kind}_cg_iter"] = (t20 - t10) / 10 / grad
    out = {}
    for name, ratios in per_repeat.items():
        q1, med, q3 = np.percentile(ratios, [25, 50, 75])
        row = {"ratio": float(med), "ratio_q1": float(q1), "ratio_q3": float(q3)}
        if name in times:
            row["ms"] = 1e3 * statistics.median(times[name])
        out[name] = row
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


def cpu_model() -> str:
    model = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return model or platform.machine()


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
    }


def print_case(case: Case, n_params: int, summary, checks, repeats: int) -> None:
    head = (
        f"{case.name} {case.head} | batch {case.batch}, width {case.width} "
        f"(2 hidden tanh), obs {case.obs_dim}, {case.act_dim} "
        f"{'actions' if case.head == 'categorical' else 'action dim'}, {n_params} params"
    )
    print(f"\n{head}")
    print(f"{'':48} {'ratio':>7} {'[q1, q3]':>15} {'ms':>9}  target")
    for key, label, target in ROWS:
        s = summary[key]
        ms = f"{s['ms']:9.2f}" if "ms" in s else " " * 9
        tgt = ""
        if target is not None:
            tgt = f"<= {target:g}x  {'ok' if s['ratio'] <= target else 'MISSED'}"
        q = f"[{s['ratio_q1']:.2f}, {s['ratio_q3']:.2f}]"
        print(f"{label:48} {s['ratio']:6.2f}x {q:>15} {ms}  {tgt}")
    print(
        f"(median of {repeats} interleaved repeats; CG 10/20 its per call, ms: "
        + ", ".join(
            f"{k} {summary[f'{k}_cg10']['ms']:.1f}/{summary[f'{k}_cg20']['ms']:.1f}"
            for k in ("emp", "ana", "kl")
        )
        + f"; |analytic FVP - KL HVP| / |KL HVP| = "
        f"{checks['analytic_fvp_vs_kl_hvp_rel_err']:.1e})"
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved repeats")
    args = parser.parse_args(argv)
    cases = QUICK_CASES if args.quick else DEFAULT_CASES
    repeats = args.repeats or (3 if args.quick else 7)
    sample_s = 0.01 if args.quick else 0.05

    info = machine_info()
    print("npgjax benchmark: cost of a Fisher-vector product relative to one gradient")
    print(
        f"machine: {info['cpu_model']} ({info['machine']}), platform.processor="
        f"{info['platform.processor']!r}, cpu_count={info['cpu_count']}, usable="
        f"{info['usable_cpus']}, jax {info['jax']}, devices={info['devices']}"
    )
    print(
        f"float32; damping {DAMPING:g} in the CG rows and the step; step: "
        f"precondition_by_fisher(max_kl={MAX_KL}, cg_iters={STEP_CG_ITERS}, cg_tol=0.0)"
    )
    results: dict[str, Any] = {"machine": info, "repeats": repeats, "cases": []}
    t_start = time.perf_counter()
    for case in cases:
        params, batch, dist_fn, log_prob_fn, loss_fn = make_problem(case)
        variants = build_variants(case, params, batch, dist_fn, log_prob_fn, loss_fn)
        checks = check_variants(variants)
        times = time_interleaved(variants, repeats, sample_s)
        summary = summarize(times)
        n_params = num_params(params)
        print_case(case, n_params, summary, checks, repeats)
        results["cases"].append(
            {
                "case": case.__dict__,
                "num_params": n_params,
                "summary": summary,
                "times_s": times,
                "checks": checks,
                "targets": {
                    "cg_iter": TARGET_CG_ITER,
                    "natural_step": TARGET_STEP,
                },
            }
        )
    elapsed = time.perf_counter() - t_start
    results["elapsed_s"] = elapsed
    print(f"\ntotal time {elapsed:.0f} s")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
        print(f"wrote {args.json}")
    return results


if __name__ == "__main__":
    main()
