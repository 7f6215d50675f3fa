"""The run's summary (``summary.json``) and the result block printed at the end."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["first_crossing", "print_result", "success_metric", "summarize"]


def nan_stats(x: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std over ``axis``, ignoring NaN, without warnings."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(x, axis=axis), np.nanstd(x, axis=axis)


def fmt(x: float | None, spec: str = ".1f") -> str:
    return "nan" if x is None or not np.isfinite(x) else format(x, spec)


def success_metric(metrics: dict[str, np.ndarray]) -> str:
    """``eval_return`` when training evaluated the policy, else ``train_return``."""
    ev = metrics.get("eval_return")
    if ev is not None and np.any(np.isfinite(np.asarray(ev, np.float64))):
        return "eval_return"
    return "train_return"


def _last_finite(x: np.ndarray) -> np.ndarray:
    """Per row, the last finite value (NaN if none)."""
    x = np.asarray(x, np.float64)
    out = np.full(x.shape[0], np.nan)
    for s in range(x.shape[0]):
        idx = np.nonzero(np.isfinite(x[s]))[0]
        if idx.size:
            out[s] = x[s, idx[-1]]
    return out


def first_crossing(
    metrics: dict[str, np.ndarray], times: np.ndarray, target: float | None, key: str
) -> list[dict[str, Any] | None]:
    """Per seed: env steps and training seconds when ``metrics[key]`` first reached
    ``target`` (None for a seed that never did)."""
    if target is None:
        return []
    out: list[dict[str, Any] | None] = []
    ret = np.asarray(metrics[key], np.float64)
    for s in range(ret.shape[0]):
        with np.errstate(invalid="ignore"):
            hit = np.nonzero(ret[s] >= target)[0]
        if hit.size == 0:
            out.append(None)
        else:
            i = int(hit[0])
            out.append({"update": i + 1, "env_steps": int(metrics["env_steps"][s, i]),
                        "seconds": float(times[i])})
    return out


def _per_seed(values: np.ndarray, description: str) -> dict[str, Any]:
    mean, std = nan_stats(values[None, :], axis=1)
    return {"description": description, "per_seed": [float(v) for v in values],
            "mean": float(np.ravel(mean)[0]), "std": float(np.ravel(std)[0])}


def summarize(run: dict[str, Any], config: Any, metrics: dict[str, np.ndarray],
              times: np.ndarray, target: float | None) -> dict[str, Any]:
    """``summary.json``: results per seed, target, timings and the run's settings."""
    S, n_done, B = run["seeds"], times.size, config.batch_size
    out: dict[str, Any] = dict(run)
    out.update(updates_done=n_done, num_updates=config.num_updates,
               env_steps_per_seed=n_done * B)
    final = (_last_finite(metrics["train_return"])[:] if n_done else np.full(S, np.nan))
    out["final_return"] = _per_seed(final, f"mean return of the last {config.return_window} "
                                    "training episodes per seed (stochastic policy)")
    key = success_metric(metrics) if n_done else "train_return"
    if key == "eval_return":
        out["final_eval_return"] = _per_seed(
            _last_finite(metrics["eval_return"]), "mean return of the deterministic policy "
            f"over {config.eval_episodes} fresh episodes, at the last evaluation")
    out["target"] = target
    out["success_metric"] = key
    if target is not None and n_done:
        last = np.asarray(out["final_eval_return" if key == "eval_return" else
                              "final_return"]["per_seed"])
        with np.errstate(invalid="ignore"):
            out["seeds_at_target"] = int(np.sum(last >= target))
    out["time_to_target"] = first_crossing(metrics, times, target, key) if n_done else []
    sessions = run["sessions"]
    train = sum(s["train_time_s"] for s in sessions)
    out.update(wall_time_s=sum(s["wall_time_s"] for s in sessions),
               compile_time_s=sum(s["compile_time_s"] for s in sessions), train_time_s=train,
               env_steps_per_s=S * n_done * B / train if train > 0 else None,
               env_steps_per_s_per_seed=n_done * B / train if train > 0 else None)
    return out


def print_result(s: dict[str, Any], config: Any, out: Path, files: list[str]) -> None:
    """The result block at the end of a run."""
    pad = " " * 18
    fr = s["final_return"]
    lines = ["", "=" * 72,
             f"env {s['env']}   algo {s['algo']}   seeds {s['seeds']} (base seed {s['seed']})",
             f"env steps         {s['env_steps_per_seed']:,} per seed "
             f"({s['updates_done']} updates of {config.batch_size})",
             f"train return      mean of the last {config.return_window} training episodes "
             "per seed:", pad + "  ".join(fmt(v) for v in fr["per_seed"]),
             f"{pad}mean ± std over seeds: {fmt(fr['mean'])} ± {fmt(fr['std'])}"]
    if "final_eval_return" in s:
        ev = s["final_eval_return"]
        lines += [f"eval return       deterministic policy, {config.eval_episodes} episodes, "
                  "last evaluation:", pad + "  ".join(fmt(v) for v in ev["per_seed"]),
                  f"{pad}mean ± std over seeds: {fmt(ev['mean'])} ± {fmt(ev['std'])}"]
    if s["target"] is not None:
        which = "eval" if s["success_metric"] == "eval_return" else "train"
        lines.append(f"target {s['target']:g}       {s.get('seeds_at_target', 0)}/{s['seeds']} "
                     f"seeds end at it ({which} return); first crossing (env steps / "
                     "training seconds, excluding compilation):")
        per = [f"{c['env_steps']:,} / {c['seconds']:.1f} s" if c else "not reached"
               for c in s["time_to_target"]]
        for i in range(0, len(per), 4):
            lines.append(pad + "   ".join(f"seed {i + j}: {p}"
                                          for j, p in enumerate(per[i:i + 4])))
    else:
        lines.append(f"target            none known for {s['env']} (pass --target R)")
    lines += [
        f"compile time      {s['compile_time_s']:.1f} s",
        f"wall time         {s['wall_time_s']:.1f} s (training {s['train_time_s']:.1f} s)",
        f"throughput        {fmt(s['env_steps_per_s'], ',.0f')} env steps/s over all seeds "
        f"({fmt(s['env_steps_per_s_per_seed'], ',.0f')} per seed), excluding compilation",
        f"device            {s['device']['platform']} ({s['device']['device_kind']}), "
        f"{s['device']['cpu_count']} CPUs",
        f"outputs           {out}/: {' '.join(files)}",
        "=" * 72,
    ]
    print("\n".join(lines))
