"""Command line training: ``python -m npgjax.train`` (console script ``npgjax-train``).

Trains one algorithm on one gymnax environment for several seeds at once (the seeds are
vmapped), in jitted chunks of updates. Between chunks it writes the metrics, a summary and
a checkpoint, so an interrupted run can be continued with ``--resume``; at the end it
prints a result block and saves a learning curve and a diagnostics figure.

Examples::

    # NPG on CartPole with 8 seeds, outputs in runs/CartPole-v1-npg/
    python -m npgjax.train --env CartPole-v1 --algo npg --seeds 8

    # TRPO on Pendulum with a larger trust region and a smaller network
    npgjax-train --env Pendulum-v1 --algo trpo --total-timesteps 300000 \\
        --set max_kl=0.02 --set "hidden=(32, 32)" --out runs/pendulum-trpo

    # continue an interrupted run (same options, same --out)
    npgjax-train --env Pendulum-v1 --algo trpo --total-timesteps 300000 \\
        --set max_kl=0.02 --set "hidden=(32, 32)" --out runs/pendulum-trpo --resume

Outputs in ``--out`` (default ``runs/<env>-<algo>``):

* ``metrics.csv``: one row per seed and update: ``seed, update, env_steps`` and every
  metric of :func:`npgjax.rl.make_trainer` (``return`` is the mean of the last
  ``return_window`` episodes, NaN until an episode has ended).
* ``summary.json``: the config, final returns per seed, their mean and std, timings
  (compilation separately), throughput, and the device.
* ``checkpoint.pkl``: the training state of all seeds and the metrics so far.
* ``learning_curve.png`` and ``diagnostics.png`` (unless ``--no-plot``).

Options: ``--set key=value`` sets any :class:`npgjax.rl.Config` field (values are Python
literals: ``--set max_kl=0.02 --set "hidden=(32, 32)" --set normalize_obs=False``);
``--chunk-updates K`` sets the updates per jitted chunk (rounded down to a divisor of the
number of updates, so one compiled chunk serves the whole run); ``--target R`` sets the
return whose first crossing is timed (defaults: CartPole-v1 475, Acrobot-v1 -100,
Pendulum-v1 -250). JAX's persistent compilation cache is used unless
``--no-compile-cache`` (directory ``$NPGJAX_CACHE_DIR``, default ``~/.cache/npgjax/jax``);
the traced and lowered training chunk is kept there too (``jax.export``), so a warm start
skips tracing as well as compiling. Either is rebuilt when the config, the seed count,
the chunk size, the device, a package version or npgjax's source changes.
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import importlib.metadata
import json
import math
import os
import pickle
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DEFAULT_TARGETS", "choose_chunk_updates", "compile_training", "main", "parse_set"]

# Return thresholds whose first crossing is reported (the usual "solved" levels).
DEFAULT_TARGETS: dict[str, float] = {"CartPole-v1": 475.0, "Acrobot-v1": -100.0,
                                     "Pendulum-v1": -250.0}
CHECKPOINT_VERSION = 1
_TARGET_CHUNKS = 20

# Column order of metrics.csv after seed, update, env_steps; other metrics follow sorted.
_METRIC_ORDER = (
    "return", "episode_length", "episodes", "rollout_return", "kl", "max_kl", "predicted_kl",
    "entropy", "value_loss", "explained_variance", "cg_iterations", "cg_residual", "cosine",
    "ls_tries", "ls_accepted",
)

# Compiled (init, chunk) pairs of this process, keyed by (config, seeds, K): repeated
# main() calls in one process (tests, notebooks) reuse them instead of compiling again.
_COMPILED: dict[tuple[Any, int, int], tuple[Any, Any, float, float]] = {}
_COMPILED_MAX = 4


# --------------------------------------------------------------------------- parsing
def _int_arg(text: str) -> int:
    """Integers such as ``100000``, ``100_000`` or ``1e5``."""
    try:
        return int(text.replace("_", ""))
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not value.is_integer():
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}")
    return int(value)


def _positive_int(text: str) -> int:
    value = _int_arg(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _target_arg(text: str) -> float | str:
    if text.lower() in ("none", "off", ""):
        return "none"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', got {text!r}") from None


def _coerce(key: str, raw: str, value: Any, default: Any) -> Any:
    """Convert a literal to the type of the Config field's default, or raise ValueError."""

    def bad(kind: str) -> ValueError:
        return ValueError(f"--set {key}={raw}: {key} expects {kind}, got {value!r}")

    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
            return value.lower() in ("true", "yes")
        raise bad("True or False")
    if isinstance(default, int):
        if isinstance(value, bool):
            raise bad("an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise bad("an integer")
    if isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise bad("a number")
    if isinstance(default, tuple):
        if isinstance(value, int) and not isinstance(value, bool):
            return (value,)
        if isinstance(value, (tuple, list)) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            return tuple(value)
        raise bad("a tuple of integers such as (64, 64)")
    if isinstance(default, str):
        if isinstance(value, str):
            return value
        raise bad("a string")
    return value


def parse_set(items: Sequence[str]) -> dict[str, Any]:
    """Parse ``key=value`` strings into Config overrides.

    Values are Python literals (``ast.literal_eval``), or plain strings when they are not
    literals, converted to the type of the field (``max_kl=1`` gives ``1.0``,
    ``hidden=32`` gives ``(32,)``).

    Raises:
      ValueError: naming the item, for a missing ``=``, an unknown field, ``env``/``algo``
        (use ``--env``/``--algo``), a repeated key, or a value of the wrong type.

    Examples:
      >>> parse_set(["max_kl=0.02", "hidden=(32,32)", "activation=relu"])
      {'max_kl': 0.02, 'hidden': (32, 32), 'activation': 'relu'}
    """
    from npgjax.rl.configs import Config

    defaults = {f.name: f.default for f in dataclasses.fields(Config)}
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key, raw = key.strip(), raw.strip()
        if not sep or not key:
            raise ValueError(f"--set expects key=value, got {item!r}")
        if key in ("env", "algo"):
            raise ValueError(f"--set {key}=...: use --{key} instead")
        if key not in defaults:
            raise ValueError(
                f"--set {item}: unknown config option {key!r}; valid options: "
                f"{', '.join(sorted(k for k in defaults if k not in ('env', 'algo')))}"
            )
        if key in out:
            raise ValueError(f"--set {key} given more than once")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            value = raw
        out[key] = _coerce(key, raw, value, defaults[key])
    return out


def choose_chunk_updates(num_updates: int, requested: int | None = None) -> int:
    """Updates per jitted chunk: a divisor of ``num_updates``, so one compilation serves all.

    With ``requested``, the largest divisor not above it; without, the divisor nearest to
    ``num_updates / 20`` (about 20 chunks; ties go to the larger chunk).

    Examples:
      >>> choose_chunk_updates(98), choose_chunk_updates(98, 10), choose_chunk_updates(97)
      (7, 7, 1)
    """
    divisors = [d for d in range(1, num_updates + 1) if num_updates % d == 0]
    if requested is not None:
        return max(d for d in divisors if d <= max(1, requested))
    target = num_updates / _TARGET_CHUNKS
    return min(divisors, key=lambda d: (abs(d - target), -d))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="npgjax-train",
        description="Train a natural policy gradient agent on a gymnax environment, "
        "several seeds at once.",
        epilog="Example: npgjax-train --env CartPole-v1 --algo npg --seeds 8 "
        "--set max_kl=0.02",
    )
    parser.add_argument("--env", default="CartPole-v1", help="gymnax environment id "
                        "(default: %(default)s)")
    parser.add_argument("--algo", default="npg", help="npg, trpo, vpg or enac "
                        "(default: %(default)s)")
    parser.add_argument("--seeds", type=_positive_int, default=8,
                        help="number of seeds trained in parallel (default: %(default)s)")
    parser.add_argument("--seed", type=_int_arg, default=0,
                        help="base seed; seed keys are split from it (default: %(default)s)")
    parser.add_argument("--total-timesteps", type=_positive_int, default=None, metavar="N",
                        help="environment steps per seed (default: the config's)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE",
                        help="set a config field, e.g. --set max_kl=0.02 "
                        "--set 'hidden=(32, 32)' (repeatable)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="output directory (default: runs/<env>-<algo>)")
    parser.add_argument("--chunk-updates", type=_positive_int, default=None, metavar="K",
                        help="updates per jitted chunk, rounded down to a divisor of the "
                        "number of updates (default: about 20 chunks)")
    parser.add_argument("--target", type=_target_arg, default=None, metavar="R",
                        help="return threshold whose first crossing is timed, or 'none' "
                        "(default: CartPole-v1 475, Acrobot-v1 -100, Pendulum-v1 -250)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the checkpoint in --out (same options needed)")
    parser.add_argument("--no-plot", action="store_true", help="do not write the figures")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--no-compile-cache", action="store_true",
                        help="do not use JAX's persistent compilation cache (nor save the "
                        "exported training chunk)")
    parser.add_argument("--stop-after-chunks", type=_positive_int, default=None,
                        help=argparse.SUPPRESS)
    return parser


# --------------------------------------------------------------------------- helpers
def _enable_compile_cache() -> str:
    import jax

    path = os.path.expanduser(
        os.environ.get("NPGJAX_CACHE_DIR", os.path.join("~", ".cache", "npgjax", "jax"))
    )
    for name, value in (
        ("jax_compilation_cache_dir", path),
        ("jax_persistent_cache_min_compile_time_secs", 0),
        ("jax_persistent_cache_min_entry_size_bytes", 0),
    ):
        with contextlib.suppress(AttributeError, KeyError, ValueError, TypeError):
            jax.config.update(name, value)
    return path


_INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}
_EXPORT_SUBDIR = "npgjax-export"


def _export_path(export_dir: str, config: Any, keys: Any, chunk: int) -> Path:
    """Where the exported chunk for this config, device, code and versions lives."""
    import jax

    versions = []
    for name in ("jax", "jaxlib", "flax", "optax", "chex", "gymnax"):
        try:
            versions.append(importlib.metadata.version(name))
        except importlib.metadata.PackageNotFoundError:
            versions.append(None)
    h = hashlib.sha256()
    root = Path(__file__).resolve().parent
    for path in sorted(root.rglob("*.py")):  # any change to npgjax's code invalidates it
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    device = jax.devices()[0]
    h.update(repr((config, tuple(keys.shape), str(keys.dtype), chunk, versions,
                   device.platform, device.device_kind)).encode())
    return Path(export_dir) / _EXPORT_SUBDIR / f"{h.hexdigest()[:40]}.jaxexport"


def _exported_chunk(flat_chunk: Any, leaves: list[Any], path: Path | None) -> tuple[Any, str]:
    """``jax.export`` of the chunk: read from ``path``, else traced (and saved there)."""
    import jax
    from jax import export

    if path is not None and path.exists():
        try:
            return export.deserialize(bytearray(path.read_bytes())), "loaded"
        except Exception:  # corrupt or unreadable (e.g. flatbuffers missing): re-export
            pass
    try:
        exp = export.export(jax.jit(flat_chunk))(*leaves)
    except Exception:  # something jax.export does not support: plain jit
        return None, "off"
    if path is None:
        return exp, "traced"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(exp.serialize())
        os.replace(tmp, path)
        return exp, "saved"
    except (ImportError, OSError):
        return exp, "traced"


def compile_training(
    trainer: Any, keys: Any, chunk: int, export_dir: str | None = None
) -> tuple[Any, Any, float, float, bool]:
    """Compile ``vmap(trainer.init)`` and a ``chunk``-update ``lax.scan``, ahead of time.

    This is how the command line compiles. The chunk goes through ``jax.export``; with
    ``export_dir`` the exported program is saved there and read back by later processes
    with the same config, seed count, chunk, device, package versions and npgjax source,
    which then skip tracing and lowering it (about 1 s of a warm start). Both programs
    are then compiled by XLA side by side, ``init`` without LLVM optimisation (it runs
    once). Results are memoised in this process per ``(config, seeds, chunk)``.

    Args:
      trainer: from :func:`npgjax.rl.make_trainer`.
      keys: PRNG keys ``[seeds, 2]``; the executables take keys (init) and states (chunk)
        batched over seeds.
      chunk: updates per call of the chunk.
      export_dir: directory for exported chunks (the CLI uses its compilation-cache
        directory), or None to keep them in memory only.

    Returns:
      ``(init, run_chunk, tracing seconds, XLA seconds, memoised)``: ``init(keys) ->
      state`` and ``run_chunk(state) -> (state, metrics)``. The XLA seconds include
      reading JAX's persistent compilation cache when it is on; ``run_chunk.export`` says
      whether the exported chunk was ``"loaded"``, ``"saved"``, ``"traced"`` (not saved)
      or ``"off"`` (jax.export failed; plain jit).
    """
    import jax

    config = trainer.config
    memo_key = (config, int(keys.shape[0]), chunk)
    if memo_key in _COMPILED:
        init_c, chunk_c, _, _ = _COMPILED[memo_key]
        return init_c, chunk_c, 0.0, 0.0, True

    def scan_chunk(state: Any) -> Any:
        return jax.lax.scan(lambda s, _: trainer.update(s), state, None, length=chunk)

    t0 = time.perf_counter()
    init_lowered = jax.jit(jax.vmap(trainer.init)).lower(keys)
    leaves, treedef = jax.tree.flatten(init_lowered.out_info)

    def flat_chunk(*flat: Any) -> Any:
        state, metrics = jax.vmap(scan_chunk)(jax.tree.unflatten(treedef, flat))
        return tuple(jax.tree.leaves(state)), metrics

    path = None if export_dir is None else _export_path(export_dir, config, keys, chunk)
    exported, how = _exported_chunk(flat_chunk, leaves, path)
    chunk_lowered = jax.jit(exported.call if exported is not None else flat_chunk).lower(
        *leaves
    )
    t1 = time.perf_counter()
    # XLA compiles the two side by side (it releases the GIL); init runs once, so it is
    # compiled without LLVM optimisation, which halves its compile time.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        init_future = pool.submit(init_lowered.compile, _INIT_COMPILER_OPTIONS)
        flat_c = chunk_lowered.compile()
        init_c = init_future.result()
    t2 = time.perf_counter()

    def chunk_c(state: Any) -> Any:
        flat, metrics = flat_c(*jax.tree.leaves(state))
        return jax.tree.unflatten(treedef, flat), metrics

    chunk_c.export = how  # type: ignore[attr-defined]
    while len(_COMPILED) >= _COMPILED_MAX:
        _COMPILED.pop(next(iter(_COMPILED)))
    _COMPILED[memo_key] = (init_c, chunk_c, t1 - t0, t2 - t1)
    return init_c, chunk_c, t1 - t0, t2 - t1, False


def _nan_stats(x: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(x, axis=axis), np.nanstd(x, axis=axis)


def _fmt(x: float, spec: str = ".1f") -> str:
    return "nan" if x is None or not np.isfinite(x) else format(x, spec)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _metric_columns(metrics: dict[str, np.ndarray]) -> list[str]:
    keys = [k for k in metrics if k != "env_steps"]
    return [k for k in _METRIC_ORDER if k in keys] + sorted(set(keys) - set(_METRIC_ORDER))


def _write_csv(path: Path, metrics: dict[str, np.ndarray]) -> None:
    cols = _metric_columns(metrics)
    seeds, n = metrics["env_steps"].shape
    lines = [",".join(["seed", "update", "env_steps", *cols])]

    def column(x: np.ndarray) -> list[list[str]]:
        if np.issubdtype(x.dtype, np.integer) or x.dtype == bool:
            return [[str(int(v)) for v in row] for row in x.tolist()]
        return [[format(v, ".9g") for v in row] for row in x.astype(np.float64).tolist()]

    text = {k: column(np.asarray(metrics[k])) for k in ["env_steps", *cols]}
    for s in range(seeds):
        for u in range(n):
            lines.append(",".join([str(s), str(u + 1), *(text[k][s][u] for k in
                                                            ["env_steps", *cols])]))
    _atomic_write(path, ("\n".join(lines) + "\n").encode())


def _config_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if np.isfinite(x) else None
    return x


def _first_crossing(
    metrics: dict[str, np.ndarray], times: np.ndarray, target: float | None
) -> list[dict[str, Any] | None]:
    """Per seed: env steps and training seconds when ``return`` first reached ``target``."""
    if target is None:
        return []
    out: list[dict[str, Any] | None] = []
    ret = np.asarray(metrics["return"], np.float64)
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


# --------------------------------------------------------------------------- plots
def _style_axes(ax: Any) -> None:
    ax.grid(True, alpha=0.3, linewidth=0.6)
    ax.spines["top"].set_visible(False)
    ax.spines["right"].set_visible(False)


def plot_learning_curve(
    path: Path, metrics: dict[str, np.ndarray], config: Any, target: float | None
) -> None:
    """Mean ± std of ``return`` over seeds against env steps, seeds as thin lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import EngFormatter

    x = np.asarray(metrics["env_steps"][0], np.float64)
    ret = np.asarray(metrics["return"], np.float64)
    seeds = ret.shape[0]
    mean, std = _nan_stats(ret)
    color = "#1f77b4"
    fig, ax = plt.subplots(figsize=(7.5, 4.6), dpi=150)
    for s in range(seeds):
        ax.plot(x, ret[s], color=color, alpha=0.3, linewidth=0.8,
                label="individual seeds" if s == 0 else None)
    with warnings.catch_warnings():  # all-NaN columns before the first episode ends
        warnings.simplefilter("ignore", RuntimeWarning)
        lo, hi = np.nanmin(ret, axis=0), np.nanmax(ret, axis=0)
    # The band is clipped to the range of the seeds (returns are often bounded).
    ax.fill_between(x, np.maximum(mean - std, lo), np.minimum(mean + std, hi), color=color,
                    alpha=0.18, linewidth=0, label="± 1 std")
    ax.plot(x, mean, color=color, linewidth=2.2, label=f"mean over {seeds} seeds")
    if target is not None:
        ax.axhline(target, color="#d62728", linestyle="--", linewidth=1.2,
                   label=f"target {target:g}")
    ax.set_xlabel("environment steps (per seed)")
    ax.set_ylabel(f"return (mean of last {config.return_window} episodes)")
    ax.set_title(f"{config.env} · {config.algo.upper()} · {seeds} seed{'s' * (seeds > 1)}")
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    ax.set_xlim(0, x[-1] if x.size else 1)
    _style_axes(ax)
    ax.legend(loc="best", frameon=False, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_diagnostics(path: Path, metrics: dict[str, np.ndarray], config: Any) -> bool:
    """Panels of the optimisation diagnostics that were recorded (not all NaN)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import EngFormatter

    def present(k: str) -> bool:
        return k in metrics and bool(np.any(np.isfinite(np.asarray(metrics[k], float))))

    panels = [
        ("kl", "KL divergence per update", False),
        ("entropy", "policy entropy", False),
        ("explained_variance", "explained variance (critic)", False),
        ("value_loss", "value loss", True),
        ("cg_residual", "CG residual", True),
        ("ls_tries", "line-search tries", False),
    ]
    panels = [p for p in panels if present(p[0])]
    if not panels:
        return False
    x = np.asarray(metrics["env_steps"][0], np.float64)
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.3 * ncols, 3.2 * nrows), dpi=130,
                             squeeze=False)
    colors = {"main": "#1f77b4", "pred": "#ff7f0e"}

    def band(ax: Any, y: np.ndarray, color: str, label: str | None, log: bool) -> None:
        y = np.asarray(y, np.float64)
        if log:
            y = np.where(y > 0, y, np.nan)
        mean, std = _nan_stats(y)
        if log:  # a band in log space: geometric mean × / ÷ geometric std
            lm, ls = _nan_stats(np.log(y))
            lo, hi, mean = np.exp(lm - ls), np.exp(lm + ls), np.exp(lm)
        else:
            lo, hi = mean - std, mean + std
        ax.fill_between(x, lo, hi, color=color, alpha=0.2, linewidth=0)
        ax.plot(x, mean, color=color, linewidth=1.6, label=label)

    for ax, (key, title, log) in zip(axes.flat, panels, strict=False):
        if key == "kl":
            if "max_kl" in metrics:  # the bound of each update (it may decay)
                ax.plot(x, np.asarray(metrics["max_kl"], np.float64)[0], color="0.35",
                        linestyle=":", linewidth=1.4, label="max_kl", zorder=1)
            else:
                ax.axhline(config.max_kl, color="0.35", linestyle=":", linewidth=1.4,
                           label=f"max_kl = {config.max_kl:g}", zorder=1)
            band(ax, metrics["kl"], colors["main"], "measured", log)
            if present("predicted_kl"):
                band(ax, metrics["predicted_kl"], colors["pred"], "predicted (quadratic)", log)
                ax.lines[-1].set_linestyle("--")
            ax.set_ylim(bottom=0)
            ax.legend(frameon=False, fontsize=8, loc="lower right")
        else:
            band(ax, metrics[key], colors["main"], None, log)
            if key == "ls_tries":
                ax.set_ylim(bottom=0)
        if log:
            ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("environment steps (per seed)", fontsize=8)
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))
        ax.tick_params(which="both", labelsize=8)
        _style_axes(ax)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    seeds = np.asarray(metrics["env_steps"]).shape[0]
    fig.suptitle(f"{config.env} · {config.algo.upper()} · diagnostics "
                 f"(mean ± std over {seeds} seeds)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------- main
def _check_resume(ckpt: dict[str, Any], expect: dict[str, Any], out: Path) -> str | None:
    """A message listing what differs between the checkpoint and this run, or None."""
    diffs = []
    for key in ("seeds", "seed", "chunk_updates"):
        if ckpt.get(key) != expect[key]:
            diffs.append(f"{key}: checkpoint {ckpt.get(key)!r}, now {expect[key]!r}")
    old, new = ckpt.get("config", {}), expect["config"]
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            diffs.append(f"{key}: checkpoint {old.get(key)!r}, now {new.get(key)!r}")
    if not diffs:
        return None
    return (f"--resume: the checkpoint in {out} was made with different options "
            f"({'; '.join(diffs)}); rerun with the same options or use another --out")


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (argument errors exit with 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    t_start = time.perf_counter()

    from npgjax.rl.configs import get_config

    try:
        overrides = parse_set(args.overrides)
        if args.total_timesteps is not None:
            if "total_timesteps" in overrides:
                raise ValueError("give --total-timesteps or --set total_timesteps, not both")
            overrides["total_timesteps"] = args.total_timesteps
        config = get_config(args.env, args.algo, **overrides)
    except (ValueError, TypeError) as e:
        parser.error(str(e))

    cache_dir = None if args.no_compile_cache else _enable_compile_cache()

    import jax

    from npgjax.rl.trainer import make_trainer

    try:
        trainer = make_trainer(config)
    except ValueError as e:
        parser.error(f"{config.env}: {e}")

    out = Path(args.out if args.out is not None else os.path.join("runs",
                                                                  f"{config.env}-{config.algo}"))
    num_updates = config.num_updates
    K = choose_chunk_updates(num_updates, args.chunk_updates)
    n_chunks = num_updates // K
    S, B = args.seeds, config.batch_size
    target: float | None
    if args.target is None:
        target = DEFAULT_TARGETS.get(config.env)
    else:
        target = None if args.target == "none" else float(args.target)
    cfg_dict = _config_dict(config)
    ckpt_path = out / "checkpoint.pkl"

    # ------------------------------------------------------------ state
    chunks_done = 0
    metrics: dict[str, np.ndarray] = {}
    times = np.zeros(0)
    sessions: list[dict[str, float]] = []
    ckpt: dict[str, Any] | None = None
    if args.resume:
        if not ckpt_path.exists():
            parser.error(f"--resume: no checkpoint at {ckpt_path}")
        try:
            with open(ckpt_path, "rb") as f:
                ckpt = pickle.load(f)
        except Exception as e:
            parser.error(f"--resume: cannot read {ckpt_path}: {type(e).__name__}: {e}")
        if not isinstance(ckpt, dict) or ckpt.get("version") != CHECKPOINT_VERSION:
            parser.error(f"--resume: {ckpt_path} is not an npgjax-train checkpoint "
                         f"(version {CHECKPOINT_VERSION})")
        msg = _check_resume(ckpt, {"seeds": S, "seed": args.seed, "chunk_updates": K,
                                   "config": cfg_dict}, out)
        if msg:
            parser.error(msg)
        chunks_done = int(ckpt["chunks_done"])
        metrics = {k: np.asarray(v) for k, v in ckpt["metrics"].items()}
        times = np.asarray(ckpt["times"], np.float64)
        sessions = list(ckpt["sessions"])
    out.mkdir(parents=True, exist_ok=True)

    keys = jax.random.split(jax.random.PRNGKey(args.seed), S)
    chunk_c, t_trace, t_xla, memo = None, 0.0, 0.0, False
    if chunks_done < n_chunks:  # nothing to compile when resuming a finished run
        init_c, chunk_c, t_trace, t_xla, memo = compile_training(trainer, keys, K, cache_dir)
    compile_time = t_trace + t_xla
    # A resumed state goes through the same compiled chunk as a fresh one: the PRNG key
    # lives in the state, so the continuation is bit-identical to an uninterrupted run.
    state = jax.tree.map(jax.numpy.asarray, ckpt["state"]) if ckpt else init_c(keys)

    device = jax.devices()[0]
    device_info = {"platform": device.platform, "device_kind": device.device_kind,
                   "num_devices": jax.device_count(), "cpu_count": os.cpu_count()}

    print(f"npgjax-train: {config.env} / {config.algo}, {S} seed{'s' * (S > 1)}, "
          f"{num_updates} updates of {B} env steps ({num_updates * B:,} per seed), "
          f"{n_chunks} chunks of {K}")
    if chunk_c is not None:
        print(f"  compile: {compile_time:.1f} s (tracing {t_trace:.1f} s + XLA {t_xla:.1f} s)"
              + (" [reused in this process]" if memo else "")
              + (" [exported chunk read from the cache]"
                 if getattr(chunk_c, "export", "") == "loaded" else "")
              + (f"; cache {cache_dir}" if cache_dir else "")
              + f"; device {device.platform} ({device.device_kind})")
    if ckpt is not None:
        print(f"  resuming from {ckpt_path}: {chunks_done}/{n_chunks} chunks done")
    elif ckpt_path.exists():
        print(f"  note: replacing the earlier run in {out} (--resume would continue it)")
    sys.stdout.flush()

    bar = None
    if not args.no_progress and chunks_done < n_chunks:
        try:
            from tqdm import tqdm

            bar = tqdm(total=num_updates * B, initial=chunks_done * K * B, unit="step",
                       unit_scale=True, dynamic_ncols=True, desc=f"{config.env} {config.algo}",
                       smoothing=0.1)
        except ImportError:
            bar = None

    def summary(complete: bool) -> dict[str, Any]:
        n_done = times.size
        final = (np.asarray(metrics["return"][:, -1], np.float64) if n_done
                 else np.full(S, np.nan))
        mean, std = _nan_stats(final[None, :], axis=1) if n_done else (np.nan, np.nan)
        wall = sum(s["wall_time_s"] for s in sessions)
        train = sum(s["train_time_s"] for s in sessions)
        comp = sum(s["compile_time_s"] for s in sessions)
        steps_all = S * n_done * B
        crossing = _first_crossing(metrics, times, target) if n_done else []
        return {
            "env": config.env, "algo": config.algo, "seeds": S, "seed": args.seed,
            "complete": complete, "updates_done": n_done, "num_updates": num_updates,
            "env_steps_per_seed": n_done * B, "chunk_updates": K, "chunks_done": chunks_done,
            "final_return": {
                "description": f"mean return of the last {config.return_window} episodes "
                               "per seed, after the last update",
                "per_seed": [float(v) for v in final],
                "mean": float(np.ravel(mean)[0]), "std": float(np.ravel(std)[0]),
            },
            "target": target,
            "time_to_target": crossing,
            "wall_time_s": wall, "compile_time_s": comp, "train_time_s": train,
            "env_steps_per_s": steps_all / train if train > 0 else None,
            "env_steps_per_s_per_seed": n_done * B / train if train > 0 else None,
            "sessions": sessions, "device": device_info, "config": cfg_dict,
        }

    session = {"compile_time_s": compile_time, "train_time_s": 0.0, "wall_time_s": 0.0,
               "updates": 0, "export": getattr(chunk_c, "export", None)}
    sessions.append(session)
    train_before = sum(s["train_time_s"] for s in sessions)
    stopped = interrupted = False

    def save(complete: bool) -> None:
        session["wall_time_s"] = time.perf_counter() - t_start
        _write_csv(out / "metrics.csv", metrics)
        _atomic_write(out / "summary.json",
                      (json.dumps(_jsonable(summary(complete)), indent=2) + "\n").encode())
        ckpt_new = {
            "version": CHECKPOINT_VERSION, "state": jax.device_get(state),
            "chunks_done": chunks_done, "chunk_updates": K, "seeds": S, "seed": args.seed,
            "metrics": metrics, "times": times, "sessions": sessions, "config": cfg_dict,
        }
        _atomic_write(ckpt_path, pickle.dumps(ckpt_new, protocol=pickle.HIGHEST_PROTOCOL))

    try:
        chunks_this_session = 0
        while chunks_done < n_chunks:
            if args.stop_after_chunks is not None and chunks_this_session >= \
                    args.stop_after_chunks:
                stopped = True
                break
            t0 = time.perf_counter()
            new_state, m = chunk_c(state)
            m = jax.device_get(jax.block_until_ready(m))
            state = new_state  # only now: an interrupt above leaves state and metrics in step
            dt = time.perf_counter() - t0
            new_times = train_before + session["train_time_s"] + dt * np.arange(1, K + 1) / K
            session["train_time_s"] += dt
            session["updates"] += K
            times = np.concatenate([times, new_times])
            metrics = {k: (np.concatenate([metrics[k], np.asarray(v)], axis=1) if metrics
                           else np.asarray(v)) for k, v in m.items()}
            chunks_done += 1
            chunks_this_session += 1
            save(complete=chunks_done == n_chunks)
            if bar is not None:
                ret, _ = _nan_stats(np.asarray(m["return"][:, -1], np.float64))
                kl, _ = _nan_stats(np.asarray(m["kl"][:, -1], np.float64))
                bar.set_postfix_str(f"return={_fmt(float(ret))} kl={_fmt(float(kl), '.4f')}",
                                    refresh=False)
                bar.update(K * B)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if bar is not None:
            bar.close()

    complete = chunks_done == n_chunks
    if metrics:
        save(complete)  # final timings
        if not args.no_plot:
            try:
                plot_learning_curve(out / "learning_curve.png", metrics, config, target)
                plot_diagnostics(out / "diagnostics.png", metrics, config)
            except ImportError:
                print("  (matplotlib is not installed: no figures; pip install "
                      "'npgjax[train]')")
    if interrupted or stopped:
        why = "interrupted" if interrupted else "stopped"
        print(f"{why} after {chunks_done}/{n_chunks} chunks ({chunks_done * K}/{num_updates} "
              f"updates); the checkpoint is in {out}; continue with the same options and "
              f"--resume")
        return 130 if interrupted else 0

    _print_result(summary(True), config, out, args.no_plot)
    return 0


def _print_result(s: dict[str, Any], config: Any, out: Path, no_plot: bool) -> None:
    fr = s["final_return"]
    w = config.return_window
    lines = [
        "",
        "=" * 72,
        f"env {s['env']}   algo {s['algo']}   seeds {s['seeds']} (base seed {s['seed']})",
        f"env steps         {s['env_steps_per_seed']:,} per seed "
        f"({s['updates_done']} updates of {config.batch_size})",
        f"final return      mean of last {w} episodes per seed:",
        "                  " + "  ".join(_fmt(v) for v in fr["per_seed"]),
        f"                  mean ± std over seeds: {_fmt(fr['mean'])} ± {_fmt(fr['std'])}",
    ]
    if s["target"] is not None:
        reached = [c for c in s["time_to_target"] if c is not None]
        lines.append(f"time to {s['target']:g}    {len(reached)}/{s['seeds']} seeds reached it"
                     " (env steps / training seconds, excluding compilation)")
        per = [f"{c['env_steps']:,} / {c['seconds']:.1f} s" if c else "not reached"
               for c in s["time_to_target"]]
        for i in range(0, len(per), 4):
            lines.append("                  " + "   ".join(
                f"seed {i + j}: {p}" for j, p in enumerate(per[i:i + 4])))
    sps = s["env_steps_per_s"]
    lines += [
        f"compile time      {s['compile_time_s']:.1f} s",
        f"wall time         {s['wall_time_s']:.1f} s (training {s['train_time_s']:.1f} s)",
        f"throughput        {_fmt(sps, ',.0f')} env steps/s over all seeds "
        f"({_fmt(s['env_steps_per_s_per_seed'], ',.0f')} per seed), excluding compilation",
        f"device            {s['device']['platform']} ({s['device']['device_kind']}), "
        f"{s['device']['cpu_count']} CPUs",
        f"outputs           {out}/: metrics.csv summary.json checkpoint.pkl"
        + ("" if no_plot else " learning_curve.png diagnostics.png"),
        "=" * 72,
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
