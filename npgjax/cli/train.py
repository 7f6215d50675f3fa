"""``python -m npgjax.train``: parse, compile, run the chunks, save, report.

Trains one algorithm on one gymnax environment for several seeds at once (the seeds are
vmapped), in jitted chunks of updates. Between chunks it writes the metrics, a summary
and a checkpoint, so an interrupted run can be continued with ``--resume``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from npgjax.cli import devices, io
from npgjax.cli.args import build_parser, choose_chunk_updates, parse_pairs, parse_set
from npgjax.cli.report import fmt, nan_stats, print_result, summarize
from npgjax.cli.run import Run, resume, save_run

__all__ = ["main"]


def _config_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Any:
    from npgjax.rl.configs import get_config

    try:
        overrides = parse_set(args.overrides)
        if args.total_timesteps is not None:
            if "total_timesteps" in overrides:
                raise ValueError("give --total-timesteps or --set total_timesteps, not both")
            overrides["total_timesteps"] = args.total_timesteps
        env_kwargs = parse_pairs(args.env_kwargs, "--env-kwargs")
        env_params = parse_pairs(args.env_params, "--env-params") or None
        return get_config(args.env, args.algo, env_kwargs=env_kwargs, env_params=env_params,
                          **overrides)
    except (ValueError, TypeError) as e:
        parser.error(str(e).splitlines()[0] if str(e) else type(e).__name__)


def _progress_bar(run: Run) -> Any:
    if run.args.no_progress or not run.writer or run.chunks_done >= run.n_chunks:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    B = run.config.batch_size
    return tqdm(total=run.config.num_updates * B, initial=run.chunks_done * run.chunk * B,
                unit="step", unit_scale=True, dynamic_ncols=True,
                desc=f"{run.config.env_name} {run.config.algo}", smoothing=0.1)


def _loop(run: Run, chunk_fn: Any, session: dict[str, Any], save: Any) -> tuple[bool, bool]:
    """Run the remaining chunks; returns ``(interrupted, stopped)``."""
    import jax

    bar, K = _progress_bar(run), run.chunk
    train_before = sum(s["train_time_s"] for s in run.sessions)
    try:
        done_now = 0
        while run.chunks_done < run.n_chunks:
            if run.args.stop_after_chunks is not None and done_now >= run.args.stop_after_chunks:
                return False, True
            t0 = time.perf_counter()
            new_state, m = chunk_fn(run.state, run.chunks_done * K)
            m = jax.device_get(jax.block_until_ready(m))
            run.state = new_state  # only now: an interrupt above leaves state and metrics in step
            dt = time.perf_counter() - t0
            run.times = np.concatenate([run.times, train_before + session["train_time_s"]
                                        + dt * np.arange(1, K + 1) / K])
            session["train_time_s"] += dt
            session["updates"] += K
            run.metrics = {k: (np.concatenate([run.metrics[k], np.asarray(v)], axis=1)
                               if run.metrics else np.asarray(v)) for k, v in m.items()}
            run.chunks_done += 1
            done_now += 1
            save()
            if run.tb is not None and run.writer:
                run.tb.write(m, (run.chunks_done - 1) * K + 1)
            if bar is not None:
                ret, _ = nan_stats(np.asarray(m["train_return"][:, -1], np.float64))
                kl, _ = nan_stats(np.asarray(m["kl"][:, -1], np.float64))
                bar.set_postfix_str(f"return={fmt(float(ret))} kl={fmt(float(kl), '.4f')}",
                                    refresh=False)
                bar.update(K * run.config.batch_size)
    except KeyboardInterrupt:
        return True, False
    finally:
        if bar is not None:
            bar.close()
    return False, False


def _plots(run: Run) -> list[str]:
    if run.args.no_plot or not run.writer:
        return []
    try:
        from npgjax.cli.plots import plot_diagnostics, plot_learning_curve

        plot_learning_curve(run.out / "learning_curve.png", run.metrics, run.config, run.target)
        plot_diagnostics(run.out / "diagnostics.png", run.metrics, run.config)
    except ImportError:
        print("  (matplotlib is not installed: no figures; pip install 'npgjax[train]')")
        return []
    return ["learning_curve.png", "diagnostics.png"]


def _target(args: argparse.Namespace, config: Any) -> float | None:
    from npgjax.rl.envs import default_target

    if args.target is None:
        return default_target(config.env)
    return None if args.target == "none" else float(args.target)


def _parser() -> argparse.ArgumentParser:
    parser = build_parser()
    parser.add_argument("--tensorboard", action="store_true",
                        help="also write every metric per update and seed as TensorBoard "
                        "scalars (tags seed<i>/<metric>) in <out>/tensorboard (needs "
                        "tensorboardX: pip install 'npgjax[tensorboard]')")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (argument errors exit with 2)."""
    parser = _parser()
    args = parser.parse_args(argv)
    t_start = time.perf_counter()
    devices.init_distributed(args, parser)  # before any other JAX call
    # Before anything compiles: JAX decides whether a process uses its persistent cache
    # (and which directory) at the first compilation.
    from npgjax.cli.compile import enable_compile_cache, no_compile_cache

    if args.no_compile_cache:
        with no_compile_cache():
            return _setup_and_train(args, parser, None, t_start)
    cache_dir = enable_compile_cache()
    return _setup_and_train(args, parser, cache_dir, t_start, _prefetch(args, cache_dir))


def _request(args: argparse.Namespace) -> dict[str, Any]:
    """What decides the config, the chunk and the mesh: the warm-start key
    (:mod:`npgjax.cli.warm`; the seed count is in the keys' shape)."""
    names = ("env", "algo", "overrides", "total_timesteps", "env_kwargs", "env_params",
             "chunk_updates", "shard", "devices", "quick_compile")
    return {k: getattr(args, k) for k in names}


def _prefetch(args: argparse.Namespace, cache_dir: str) -> Any:
    """Start reading an earlier run's programs (:func:`npgjax.cli.warm.prefetch_training`)
    while the config and the trainer are built; None when there are none."""
    import jax

    from npgjax.cli.warm import prefetch_training

    if jax.process_count() > 1:
        return None
    keys = jax.eval_shape(lambda: jax.random.split(jax.random.PRNGKey(0), args.seeds))
    try:
        return prefetch_training(cache_dir, _request(args), keys)
    except Exception:  # anything unexpected: compile as usual
        return None


def _setup_and_train(args: argparse.Namespace, parser: argparse.ArgumentParser,
                     cache_dir: str | None, t_start: float, prefetched: Any = None) -> int:
    """Build the trainer and the run's outputs, then train (the lock held throughout)."""
    config = _config_from_args(args, parser)
    if args.tensorboard and not io.tensorboard_available():
        parser.error("--tensorboard needs tensorboardX, which is not installed: "
                     "pip install 'npgjax[tensorboard]'")
    from npgjax.rl.trainer import make_trainer

    try:
        trainer = make_trainer(config)
    except (ValueError, TypeError) as e:
        parser.error(f"{config.env_name}: {e}")
    out = Path(args.out if args.out is not None
               else os.path.join("runs", f"{config.env_name}-{config.algo}"))
    run = Run(args, config, out, choose_chunk_updates(config.num_updates, args.chunk_updates),
               _target(args, config), mesh=devices.choose_mesh(args, config, parser))
    run.writer = devices.is_writer()
    lock = None
    try:
        if run.writer:
            io.prepare_out(out, must_exist=args.resume)
            lock = io.acquire_lock(out)
        elif args.resume and not (out / "checkpoint.json").exists():
            raise ValueError(f"--resume: no checkpoint in {out} on this host (with several "
                             "hosts, --out must be on a shared file system to resume)")
    except ValueError as e:
        parser.error(str(e))
    try:
        return _train(run, trainer, parser, cache_dir, t_start, prefetched)
    finally:
        if run.tb is not None:
            run.tb.close()
        if lock is not None:
            io.release_lock(lock)



def _train(run: Run, trainer: Any, parser: argparse.ArgumentParser, cache_dir: str | None,
           t_start: float, prefetched: Any = None) -> int:
    import jax

    args, config, out = run.args, run.config, run.out
    keys = jax.random.split(jax.random.PRNGKey(args.seed), args.seeds)
    ckpt = resume(run, trainer, keys, parser) if args.resume else None
    init_fn, chunk_fn, t_trace, t_xla, memo = None, None, 0.0, 0.0, False
    if run.chunks_done < run.n_chunks:  # nothing to compile when resuming a finished run
        init_fn, chunk_fn, t_trace, t_xla, memo = _compile(run, trainer, keys, cache_dir,
                                                           prefetched)
    # A resumed state goes through the same compiled chunk as a fresh one: the PRNG key
    # lives in the state, so the continuation is bit-identical to an uninterrupted run.
    if ckpt and run.shardings is not None:
        from npgjax.rl.mesh import put_global

        run.state = put_global(ckpt["state"], run.shardings[1])
    else:
        run.state = jax.tree.map(jax.numpy.asarray, ckpt["state"]) if ckpt else init_fn(keys)
    dev = jax.devices()[0]
    device = _device_info(run, dev)
    if run.writer:
        _announce(run, chunk_fn, t_trace, t_xla, memo, cache_dir, dev, ckpt is not None)
    if args.tensorboard and run.writer:
        run.tb = io.TensorBoardLog(out / "tensorboard")

    session = {"compile_time_s": t_trace + t_xla, "train_time_s": 0.0, "wall_time_s": 0.0,
               "updates": 0, "export": getattr(chunk_fn, "export", None),
               "quick_compile": args.quick_compile}
    run.sessions.append(session)

    def save() -> None:
        save_run(run, device, session, t_start)

    interrupted, stopped = _loop(run, chunk_fn, session, save)
    files = ["metrics.csv", "summary.json", "checkpoint.json", "checkpoint.msgpack"]
    files += ["tensorboard/"] if args.tensorboard else []
    if run.metrics:
        save()  # final timings
        files += _plots(run)
    if not run.writer:
        return 130 if interrupted else 0
    if interrupted or stopped:
        print(f"{'interrupted' if interrupted else 'stopped'} after {run.chunks_done}/"
              f"{run.n_chunks} chunks ({run.chunks_done * run.chunk}/{config.num_updates} "
              f"updates); the checkpoint is in {out}; continue with the same options and "
              "--resume")
        return 130 if interrupted else 0
    print_result(summarize(run.header(device), config, run.metrics, run.times, run.target),
                 config, out, files)
    return 0


def _compile(run: Run, trainer: Any, keys: Any, cache_dir: str | None, prefetched: Any
             ) -> tuple[Any, Any, float, float, bool]:
    """``(init, run_chunk, tracing s, XLA s, memoised)``: read back (``prefetched``) or
    compiled, on one device, on two for ``--shard tasks``, or split over the mesh."""
    from npgjax.cli.compile import compile_training

    args = run.args
    if run.mesh is not None and args.shard != "tasks":
        init_fn, chunk_fn, run.shardings, t_trace, t_xla = devices.compile_sharded(
            run.config, run.mesh, keys, run.chunk, cache_dir, args.quick_compile)
        return init_fn, chunk_fn, t_trace, t_xla, False
    if args.shard == "tasks":  # tasks: everything replicated
        from npgjax.rl.tasks import make_task_trainer

        trainer = make_task_trainer(run.config, run.mesh)
    from npgjax.cli.warm import with_tree

    return with_tree(prefetched, trainer, keys) or compile_training(
        trainer, keys, run.chunk, cache_dir, mesh=run.mesh, request=_request(args),
        quick_compile=args.quick_compile)


def _device_info(run: Run, dev: Any) -> dict[str, Any]:
    import jax

    return {"platform": dev.platform, "device_kind": dev.device_kind,
            "num_devices": jax.device_count(), "cpu_count": os.cpu_count(),
            "devices_used": 1 if run.mesh is None else run.mesh.size,
            "shard": None if run.mesh is None else run.args.shard,
            "processes": jax.process_count()}


def _announce(run: Run, chunk_fn: Any, t_trace: float, t_xla: float, memo: bool,
              cache_dir: str | None, dev: Any, resumed: bool) -> None:
    cfg, S = run.config, run.args.seeds
    print(f"npgjax-train: {cfg.env_name} / {cfg.algo}, {S} seed{'s' * (S > 1)}, "
          f"{cfg.num_updates} updates of {cfg.batch_size} env steps "
          f"({cfg.num_updates * cfg.batch_size:,} per seed), {run.n_chunks} chunks of "
          f"{run.chunk}")
    if chunk_fn is not None:
        print(f"  compile: {t_trace + t_xla:.1f} s (tracing {t_trace:.1f} s + XLA "
              f"{t_xla:.1f} s)" + (" [reused in this process]" if memo else "")
              + {"loaded": " [exported chunk read from the cache]",
                 "warm": " [programs read from the cache before the trainer was built]"}.get(
                  getattr(chunk_fn, "export", ""), "")
              + (f"; cache {cache_dir}" if cache_dir else "")
              + f"; device {dev.platform} ({dev.device_kind})"
              + ("" if run.mesh is None else f" x {run.mesh.size}, {run.args.shard} "
                 f"sharded, {devices.process_text()}"))
    if run.target is None:
        print(f"  no target: none known for {cfg.env_name} (pass --target R to time one)")
    if resumed:
        print(f"  resuming from {run.out / 'checkpoint.json'}: {run.chunks_done}/"
              f"{run.n_chunks} chunks done")
    elif any((run.out / f).exists() for f in ("checkpoint.json", "checkpoint.pkl")):
        print(f"  note: replacing the earlier run in {run.out} (--resume would continue it)")
    sys.stdout.flush()
