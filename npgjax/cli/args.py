"""Command-line parsing: options, ``--set key=value`` overrides and environment arguments."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import os
from collections.abc import Sequence
from typing import Any

__all__ = ["build_parser", "choose_chunk_updates", "parse_pairs", "parse_set"]

_TARGET_CHUNKS = 20

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


def option_defaults() -> dict[str, Any]:
    """Every option ``--set`` takes, with its default: the common config fields and the
    options of every registered algorithm (``get_config`` then refuses those that the
    chosen algorithm does not use)."""
    from npgjax.rl.algos import ALGORITHMS
    from npgjax.rl.configs import Config

    skip = ("env", "algo", "env_kwargs", "env_params", "options")
    out = {f.name: f.default for f in dataclasses.fields(Config) if f.name not in skip}
    for algo in ALGORITHMS.values():
        for f in dataclasses.fields(algo.options):
            out.setdefault(f.name, f.default)
    return out


def _literal(raw: str) -> Any:
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return raw


def parse_pairs(items: Sequence[str], flag: str) -> dict[str, Any]:
    """Parse ``key=value`` strings (values are Python literals, else strings).

    Examples:
      >>> parse_pairs(["size=16", "name=deep"], "--env-kwargs")
      {'size': 16, 'name': 'deep'}
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"{flag} expects key=value, got {item!r}")
        if key in out:
            raise ValueError(f"{flag} {key} given more than once")
        out[key] = _literal(raw.strip())
    return out


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
    defaults = option_defaults()
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key, raw = key.strip(), raw.strip()
        if not sep or not key:
            raise ValueError(f"--set expects key=value, got {item!r}")
        if key in ("env", "algo", "env_kwargs", "env_params", "options"):
            flag = key.replace("_", "-")
            raise ValueError(f"--set {key}=...: use --{flag} instead")
        if key not in defaults:
            raise ValueError(
                f"--set {item}: unknown config option {key!r}; valid options: "
                f"{', '.join(sorted(defaults))}"
            )
        if key in out:
            raise ValueError(f"--set {key} given more than once")
        out[key] = _coerce(key, raw, _literal(raw), defaults[key])
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


class _ObsKeepAction(argparse.Action):
    """``--obs-keep 0,2`` -> the override ``obs_keep=(0, 2)`` appended to ``--set``'s list."""

    def __call__(self, parser, namespace, values, option_string=None):
        try:
            keep = tuple(int(v) for v in str(values).replace(" ", "").split(",") if v != "")
        except ValueError:
            parser.error(f"{option_string} expects comma-separated observation indices such "
                         f"as 0,2; got {values!r}")
        if not keep:
            parser.error(f"{option_string} expects at least one observation index")
        items = list(getattr(namespace, "overrides", None) or [])
        if any(i.partition("=")[0].strip() == "obs_keep" for i in items):
            parser.error(f"{option_string} given twice (or with --set obs_keep=...)")
        namespace.overrides = items + [f"obs_keep={keep}"]


def _add_compute_args(parser: argparse.ArgumentParser) -> None:
    """How the run compiles and where it runs: the compile cache and options, the
    devices, the sharding and several hosts."""
    parser.add_argument("--no-compile-cache", action="store_true",
                        help="do not use JAX's persistent compilation cache, not even one "
                        "that JAX_COMPILATION_CACHE_DIR names (nor save the exported "
                        "training chunk)")
    parser.add_argument("--quick-compile", action="store_true",
                        help="on a CPU, compile the training chunk with XLA's older loop "
                        "emitters: about 0.55-0.8x the XLA time, 1.0-1.25x the time per "
                        "update for one seed of a small task, up to 1.4x vmapped over "
                        "seeds or on image observations "
                        "(npgjax.rl.compiler_options(quick=True))")
    parser.add_argument("--devices", type=_positive_int, default=None, metavar="N",
                        help="devices to train on (default: all; with several processes, "
                        "all of theirs; on a CPU, N > 1 makes N host devices, which run "
                        "side by side on its cores)")
    parser.add_argument("--shard", choices=("seeds", "envs", "both", "tasks"),
                        default="seeds",
                        help="what is split over the devices: the seeds (independent runs "
                        "side by side), the environments of each seed (one policy, a "
                        "global batch of num_envs * num_steps), both (a 2-D mesh), or "
                        "each update's policy step and critic fit, side by side on 2 "
                        "devices ('tasks'; on a CPU it makes 2 host devices; fastest for "
                        "one small seed on 2 cores) (default: %(default)s)")
    dist = parser.add_argument_group(
        "many hosts", "one process per host, started with the same options; each drives "
        "its local devices and process 0 writes the outputs (also from the environment "
        "variables NPGJAX_COORDINATOR, NPGJAX_NUM_PROCESSES, NPGJAX_PROCESS_ID)")
    dist.add_argument("--coordinator", default=os.environ.get("NPGJAX_COORDINATOR"),
                      metavar="HOST:PORT", help="address of process 0's coordinator")
    dist.add_argument("--num-processes", type=_positive_int,
                      default=os.environ.get("NPGJAX_NUM_PROCESSES"), metavar="N",
                      help="number of processes")
    dist.add_argument("--process-id", type=_int_arg, default=os.environ.get("NPGJAX_PROCESS_ID"),
                      metavar="I", help="this process's index, 0 to N-1")


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
    parser.add_argument("--env-kwargs", action="append", default=[], metavar="KEY=VALUE",
                        help="constructor argument of the environment, e.g. --env "
                        "DeepSea-bsuite --env-kwargs size=16 (repeatable)")
    parser.add_argument("--env-params", action="append", default=[], metavar="KEY=VALUE",
                        help="field of the environment's params, e.g. "
                        "--env-params max_steps_in_episode=200 (repeatable)")
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
    parser.add_argument("--obs-keep", action=_ObsKeepAction, default=None, metavar="I,J",
                        help="keep only these observation indices (a partially observed "
                        "task), e.g. --env CartPole-v1 --obs-keep 0,2 drops the velocities; "
                        "same as --set 'obs_keep=(0, 2)'")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="output directory (default: runs/<env>-<algo>)")
    parser.add_argument("--chunk-updates", type=_positive_int, default=None, metavar="K",
                        help="updates per jitted chunk, rounded down to a divisor of the "
                        "number of updates (default: about 20 chunks)")
    parser.add_argument("--target", type=_target_arg, default=None, metavar="R",
                        help="return that counts as solved, or 'none': its first crossing "
                        "is timed and the final result compared with it, on the evaluation "
                        "return when evaluation is on (default: the environment's solved "
                        "return, e.g. CartPole-v1 475, Catch-bsuite 1; see "
                        "npgjax.rl.SOLVED_RETURNS)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the checkpoint in --out (same options needed)")
    parser.add_argument("--no-plot", action="store_true", help="do not write the figures")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_compute_args(parser)
    parser.add_argument("--stop-after-chunks", type=_positive_int, default=None,
                        help=argparse.SUPPRESS)
    return parser


