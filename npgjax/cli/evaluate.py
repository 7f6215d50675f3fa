"""``python -m npgjax.evaluate RUN_DIR``: evaluate, and optionally render, trained policies.

Loads the trained seeds of a run directory (:func:`npgjax.rl.load_policy`), runs
``--episodes`` episodes per seed in one jitted call vmapped over seeds and episodes
(:func:`npgjax.rl.evaluate_policy`), prints the mean and standard deviation of the
return per seed, and writes a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="npgjax-evaluate",
        description="Evaluate the trained policies of an npgjax-train run directory.",
        epilog="Example: npgjax-evaluate runs/CartPole-v1-npg --episodes 100 "
        "--render cartpole.gif")
    parser.add_argument("run_dir", metavar="RUN_DIR", help="output directory of npgjax-train "
                        "(or of npgjax.rl.save_policy)")
    parser.add_argument("--episodes", type=int, default=100,
                        help="episodes per seed (default: %(default)s)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, metavar="S",
                        help="which trained seeds (default: all)")
    parser.add_argument("--stochastic", action="store_true",
                        help="sample actions (default: the deterministic argmax or mean)")
    parser.add_argument("--max-steps", type=int, default=None, metavar="N",
                        help="step cap per episode (default: the environment's)")
    parser.add_argument("--key", type=int, default=0,
                        help="PRNG seed of the evaluation (default: %(default)s)")
    parser.add_argument("--render", default=None, metavar="OUT.gif",
                        help="write one episode of the first chosen seed as a GIF")
    parser.add_argument("--out", default=None, metavar="FILE.json",
                        help="JSON summary (default: RUN_DIR/evaluation.json)")
    return parser


def _fail(message: str) -> SystemExit:
    print(f"npgjax-evaluate: error: {message.splitlines()[0]}", file=sys.stderr)
    return SystemExit(2)


def _check(args: argparse.Namespace) -> None:
    if args.episodes < 1:
        raise _fail(f"--episodes must be a positive integer, got {args.episodes}")
    if args.max_steps is not None and args.max_steps < 1:
        raise _fail(f"--max-steps must be a positive integer, got {args.max_steps}")
    if args.seeds is not None and len(set(args.seeds)) != len(args.seeds):
        raise _fail(f"--seeds has repeats: {args.seeds}")
    if args.render is not None and not args.render.lower().endswith(".gif"):
        raise _fail(f"--render {args.render}: the file name must end in .gif")
    out = Path(args.out) if args.out else None
    if out is not None and (out.is_dir() or (out.parent.exists() and not out.parent.is_dir())):
        raise _fail(f"--out {out}: not a file path")


def _evaluate(policies: Any, seeds: list[int], args: argparse.Namespace) -> tuple[Any, Any]:
    """Returns and lengths ``[seeds, episodes]``, one jitted call vmapped over seeds."""
    import jax

    from npgjax.rl import evaluate_policy

    base = jax.random.PRNGKey(args.key)
    keys = jax.vmap(lambda s: jax.random.fold_in(base, s))(np.asarray(seeds))

    @jax.jit
    def run(policies, keys):
        return jax.vmap(lambda p, k: evaluate_policy(
            p, k, args.episodes, stochastic=args.stochastic, max_steps=args.max_steps))(
            policies, keys)

    ret, length = run(policies, keys)
    return np.asarray(ret, np.float64), np.asarray(length, np.float64)


def _training_result(run_dir: Path) -> dict[str, Any] | None:
    """The per-seed final evaluation return of the training run, if it has a summary."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    key = "final_eval_return" if "final_eval_return" in summary else "final_return"
    return {"metric": key, "per_seed": summary.get(key, {}).get("per_seed")}


def _report(run_dir: Path, policy: Any, seeds: list[int], ret: Any, length: Any,
            args: argparse.Namespace, seconds: float) -> dict[str, Any]:
    import npgjax

    train = _training_result(run_dir)
    rows = []
    for i, s in enumerate(seeds):
        row = {"seed": s, "mean": float(ret[i].mean()), "std": float(ret[i].std()),
               "min": float(ret[i].min()), "max": float(ret[i].max()),
               "mean_length": float(length[i].mean())}
        if train and train["per_seed"] and s < len(train["per_seed"]):
            row["training_result"] = train["per_seed"][s]
        rows.append(row)
    means = np.array([r["mean"] for r in rows])
    return {"run_dir": str(run_dir), "env": policy.env.name, "algo": policy.config.algo,
            "episodes": args.episodes, "stochastic": args.stochastic,
            "max_steps": args.max_steps or policy.env.max_steps, "key": args.key,
            "per_seed": rows, "mean": float(means.mean()), "std": float(means.std()),
            "training_metric": train["metric"] if train else None,
            "seconds": seconds, "npgjax_version": npgjax.__version__}


def _print(s: dict[str, Any]) -> None:
    how = "sampled" if s["stochastic"] else "deterministic"
    print(f"npgjax-evaluate: {s['env']} / {s['algo']}, {s['episodes']} episodes per seed, "
          f"{how} actions ({s['seconds']:.1f} s)")
    for r in s["per_seed"]:
        extra = (f"   (training: {r['training_result']:.1f})"
                 if r.get("training_result") is not None else "")
        print(f"  seed {r['seed']}: return {r['mean']:.1f} ± {r['std']:.1f} "
              f"(min {r['min']:.1f}, max {r['max']:.1f}){extra}")
    print(f"  mean over seeds: {s['mean']:.1f} ± {s['std']:.1f}")


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns 0, or exits with 2 and a one-line error."""
    args = build_parser().parse_args(argv)
    _check(args)
    import jax

    from npgjax.rl import load_policy
    from npgjax.rl.checkpoint import read_metadata

    run_dir = Path(args.run_dir)
    try:
        trained = int(read_metadata(run_dir).get("seeds", 0))
        seeds = list(range(trained)) if args.seeds is None else args.seeds
        policies = load_policy(run_dir, seeds)
    except ValueError as e:
        raise _fail(str(e)) from None
    first = jax.tree.map(lambda x: x[0], policies)  # the first chosen seed
    t0 = time.perf_counter()
    ret, length = _evaluate(policies, seeds, args)
    summary = _report(run_dir, first, seeds, ret, length, args, time.perf_counter() - t0)
    if args.render:
        from npgjax.cli.render import render_gif

        try:
            summary["render"] = render_gif(
                first, jax.random.PRNGKey(args.key), args.render,
                args.max_steps or first.env.max_steps or 1000, args.stochastic)
        except (ValueError, ImportError, OSError) as e:
            raise _fail(str(e)) from None
    out = Path(args.out) if args.out else run_dir / "evaluation.json"
    try:
        out.write_text(json.dumps(summary, indent=2) + "\n")
    except OSError as e:
        raise _fail(f"--out {out}: {e.strerror or e}") from None
    _print(summary)
    print(f"  summary: {out}" + (f"; animation: {args.render}" if args.render else ""))
    return 0
