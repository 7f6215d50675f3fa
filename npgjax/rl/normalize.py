"""Running mean and variance of observations (parallel Welford update)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["RunningStats", "init_stats", "normalize", "update_stats"]


class RunningStats(NamedTuple):
    """Running mean and variance of observations over all steps seen so far."""

    mean: jax.Array
    var: jax.Array
    count: jax.Array


def init_stats(shape: tuple[int, ...]) -> RunningStats:
    return RunningStats(jnp.zeros(shape), jnp.ones(shape), jnp.asarray(1e-4))


def update_stats(stats: RunningStats, x: jax.Array) -> RunningStats:
    """Merge a batch ``[..., *shape]`` into the running statistics."""
    x = x.reshape((-1,) + stats.mean.shape)
    n = x.shape[0]
    bmean, bvar = jnp.mean(x, 0), jnp.var(x, 0)
    delta = bmean - stats.mean
    tot = stats.count + n
    mean = stats.mean + delta * n / tot
    m2 = stats.var * stats.count + bvar * n + delta**2 * stats.count * n / tot
    return RunningStats(mean, m2 / tot, tot)


def normalize(stats: RunningStats, x: jax.Array, clip: float = 10.0) -> jax.Array:
    return jnp.clip((x - stats.mean) / jnp.sqrt(stats.var + 1e-8), -clip, clip)
