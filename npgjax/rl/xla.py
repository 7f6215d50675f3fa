"""XLA compiler options for training: about 0.6x the CPU compile time, the same speed.

XLA's CPU backend hands every fused kernel to LLVM at optimisation level 3 by default.
Training code vmapped over seeds turns into many small batched loops, and LLVM's O3
passes on them dominate the compile: for 16 seeds of CartPole-v1 NPG (the 100k-step
run, one ``jax.jit(jax.vmap(train))``) tracing and XLA's compile took 15.1 s at the
default and 9.7 s at level 1 (medians of 3, ``benchmarks/compile_time.py``), and the run
was as fast (2-core AMD EPYC, jax 0.10.2;
``benchmarks/compare_rejax.py`` and ``benchmarks/learning.py`` use these options). The
heavy work (matrix products, convolutions) runs in XLA's runtime library either way.
Level 0 saves little more compile time and doubles the run time.

Lower LLVM optimisation does change floating-point rounding (instruction selection and
contraction differ), so the same seed can end differently, as it does on another CPU:
compare learning rates over many seeds, not single runs.

:func:`unrolled_threefry` lowers JAX's PRNG without its CPU while loops (the same bits):
one-seed rollouts, chains of small kernels, run faster.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import jax

__all__ = ["compiler_options", "unrolled_threefry"]

_CPU_OPTIONS = {"xla_backend_optimization_level": 1}
_CPU_QUICK = {"xla_cpu_use_fusion_emitters": False}


def compiler_options(backend: str | None = None, *, quick: bool = False) -> dict[str, Any]:
    """XLA options for compiling training: ``jax.jit(f, compiler_options=...)``.

    ``quick=True`` also turns off XLA's MLIR fusion emitters on the CPU
    (``xla_cpu_use_fusion_emitters``): its older loop emitters compile each fused kernel
    faster, and the kernels run slower. Against the command line's plain chunk (which for
    one seed runs without vmap's seed axis; the quick one keeps it, as its older
    emitters run that program slower still) on a 2-core AMD EPYC
    (``benchmarks/quick_compile.py``, two runs, session 24):

    ======================================  ===========  ================
    program (chunk of 5 updates, LLVM O1)   XLA time     time per update
    ======================================  ===========  ================
    one seed, classic control (obs <= 6)    0.56-0.79x   1.12-1.25x
    one seed, bsuite Catch / DeepSea        0.60-0.82x   1.02-1.12x
    one seed, Breakout-MinAtar (images)     0.65-0.67x   1.38-1.39x
    2 and 16 seeds vmapped, CartPole-v1     0.58-0.68x   1.19-1.42x
    ======================================  ===========  ================

    It pays for a short run of one seed, where compilation is most of the time to the
    result (``npgjax-train --seeds 1 --quick-compile``: 1-2.6 s less XLA time);
    without ``quick`` is the better choice for anything that trains for longer than it
    compiles. Other kernels round differently, so the same seed can end differently (as
    on another CPU).

    Args:
      backend: ``"cpu"``, ``"gpu"``, ``"tpu"``, or None for ``jax.default_backend()``.
      quick: trade run time for compile time as above (CPU only; ignored elsewhere).

    Returns:
      On the CPU ``{"xla_backend_optimization_level": 1}`` (LLVM O1 instead of O3: about
      0.6x the compile time of a vmapped trainer, the same run time); elsewhere ``{}``,
      XLA's defaults (on an NVIDIA H200 level 1 compiled the 16-seed CartPole-v1 program
      in 12.4 s against 13.1 s: not worth other rounding; TPUs not measured). With
      ``quick`` on the CPU also ``"xla_cpu_use_fusion_emitters": False``.

    Examples:
      >>> import jax
      >>> from npgjax.rl import compiler_options, get_config, make_train
      >>> compiler_options("cpu")
      {'xla_backend_optimization_level': 1}
      >>> compiler_options("cpu", quick=True)
      {'xla_backend_optimization_level': 1, 'xla_cpu_use_fusion_emitters': False}
      >>> cfg = get_config("CartPole-v1", total_timesteps=64, num_envs=2, num_steps=16)
      >>> train = jax.jit(jax.vmap(make_train(cfg)), compiler_options=compiler_options())
      >>> keys = jax.random.split(jax.random.PRNGKey(0), 16)  # then train(keys)
    """
    backend = jax.default_backend() if backend is None else backend
    if backend != "cpu":
        return {}
    return {**_CPU_OPTIONS, **_CPU_QUICK} if quick else dict(_CPU_OPTIONS)


def _threefry_rules() -> tuple[dict, Any, Any] | None:
    """JAX's CPU lowering table, the threefry primitive and its generic (unrolled)
    lowering; None where this JAX keeps them elsewhere (then nothing is swapped)."""
    try:
        from jax._src.interpreters import mlir  # the tables live only here
        from jax.extend.core.primitives import threefry2x32_p

        return mlir._platform_specific_lowerings["cpu"], threefry2x32_p, mlir._lowerings[
            threefry2x32_p]
    except (ImportError, AttributeError, KeyError):
        return None


@contextlib.contextmanager
def unrolled_threefry() -> Iterator[None]:
    """Lower JAX's threefry PRNG as straight-line code on the CPU while inside.

    On the CPU, JAX lowers each threefry hash (behind every ``jax.random`` call) to a
    5-iteration while loop, to keep XLA's compile time down; other platforms get the
    same 20 rounds unrolled. The bits are the same either way (integer arithmetic), but
    inside a sequential loop such as a rollout's ``lax.scan`` each small while loop
    costs a few kernel launches per step: the 512-step rollout of the RL-zoo CartPole-v1
    settings takes 2.1 ms unrolled against 3.1 ms rolled, one update 0.92x the time on
    one device and 0.95x with ``--shard tasks`` (``benchmarks/threefry.py``, 2-core AMD
    EPYC); the compile time and the 16-seed vmapped run did not change beyond the noise
    (the seeds share each launch; ``benchmarks/compile_time.py --unrolled``). The
    command line lowers its programs inside this (``npgjax.cli.compile``).

    This swaps an entry of JAX's internal table of CPU lowering rules and restores it on
    exit, so it affects only what is lowered inside (jit caches lowerings: lower a new
    function), in any thread of the process meanwhile (the same bits, so harmless).
    Where that table is not found it does nothing. Delete it when JAX stops rolling
    threefry on the CPU (``tests/test_xla.py`` checks that it still does).

    Yields:
      Nothing; what is lowered inside (``jax.jit(f).lower``, ``jax.export``) has threefry
      unrolled. Compile and run it anywhere afterwards.

    Examples:
      >>> import jax
      >>> from npgjax.rl.xla import unrolled_threefry
      >>> with unrolled_threefry():
      ...     bits = jax.jit(lambda k: jax.random.bits(k, (3,))).lower(
      ...         jax.random.PRNGKey(0)).compile()
    """
    rules = _threefry_rules()
    if rules is None:
        yield
        return
    cpu, prim, generic = rules
    before = cpu.get(prim)
    cpu[prim] = generic
    try:
        yield
    finally:
        if before is None:
            cpu.pop(prim, None)
        else:
            cpu[prim] = before
