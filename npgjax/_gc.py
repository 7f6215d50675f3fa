"""Python's cyclic garbage collector paused while npgjax imports and traces.

Importing jax, flax and gymnax and tracing a training program allocate millions of
long-lived objects and almost no garbage, yet the collector keeps scanning the whole
growing heap. Measured on the 2-core AMD EPYC (session 13, 8 alternating fresh
processes, medians): ``import npgjax.train`` (with the RL layer and gymnax) took 1.09 s
before, 0.94 s with these pauses, 0.89 s with the collector off for the whole process.
``benchmarks/startup.py --gc`` repeats the measurement side by side. Delete when the
supported Pythons collect incrementally (CPython 3.14's collector) and it shows no gain.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

__all__ = ["paused_gc"]


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector in the block; restore its state after.

    Reference counting still frees everything not in a cycle; cycles made in the block
    are collected at the next collection after it.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
