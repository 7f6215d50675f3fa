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
"""

from __future__ import annotations

from typing import Any

import jax

__all__ = ["compiler_options"]

_CPU_OPTIONS = {"xla_backend_optimization_level": 1}


def compiler_options(backend: str | None = None) -> dict[str, Any]:
    """XLA options for compiling training: ``jax.jit(f, compiler_options=...)``.

    Args:
      backend: ``"cpu"``, ``"gpu"``, ``"tpu"``, or None for ``jax.default_backend()``.

    Returns:
      On the CPU ``{"xla_backend_optimization_level": 1}`` (LLVM O1 instead of O3: about
      0.6x the compile time of a vmapped trainer, the same run time); elsewhere ``{}``,
      XLA's defaults (on an NVIDIA H200 level 1 compiled the 16-seed CartPole-v1 program
      in 12.4 s against 13.1 s: not worth other rounding; TPUs not measured).

    Examples:
      >>> import jax
      >>> from npgjax.rl import compiler_options, get_config, make_train
      >>> compiler_options("cpu")
      {'xla_backend_optimization_level': 1}
      >>> cfg = get_config("CartPole-v1", total_timesteps=64, num_envs=2, num_steps=16)
      >>> train = jax.jit(jax.vmap(make_train(cfg)), compiler_options=compiler_options())
      >>> keys = jax.random.split(jax.random.PRNGKey(0), 16)  # then train(keys)
    """
    backend = jax.default_backend() if backend is None else backend
    return dict(_CPU_OPTIONS) if backend == "cpu" else {}
