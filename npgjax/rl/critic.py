"""The critic: a value network fitted to the GAE targets with adam, in shuffled minibatches."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

Array = jax.Array
PyTree = Any

__all__ = ["fit_critic", "permutations"]


def permutations(key: Array, num: int, n: int) -> Array:
    """``num`` random permutations of ``range(n)``, shape ``[num, n]``, from one sort.

    Each row sorts random bits with the index packed into the low bits of the same
    uint32 (a single-operand sort, much cheaper on CPU than ``jax.random.permutation``'s
    key-value sort). Ties in the random high bits are broken by index, a bias of order
    ``n / 2**(32 - log2(n))`` per pair, negligible for minibatch shuffling.

    Examples:
      >>> import jax
      >>> from npgjax.rl.critic import permutations
      >>> p = permutations(jax.random.PRNGKey(0), 2, 5)
      >>> p.shape, sorted(p[0].tolist())
      ((2, 5), [0, 1, 2, 3, 4])
    """
    bits = max(1, (n - 1).bit_length())
    if bits > 24:  # too few random bits left: fall back to the exact method
        return jax.vmap(lambda k: jax.random.permutation(k, n))(jax.random.split(key, num))
    high = jax.random.bits(key, (num, n), jnp.uint32) >> bits << bits
    packed = high | jnp.arange(n, dtype=jnp.uint32)
    return (jnp.sort(packed, axis=-1) & jnp.uint32((1 << bits) - 1)).astype(jnp.int32)


def fit_critic(
    value: Callable[[PyTree, Array], Array],
    tx: optax.GradientTransformation,
    params: PyTree,
    opt_state: PyTree,
    obs: Array,
    targets: Array,
    key: Array,
    *,
    epochs: int,
    minibatch: int,
) -> tuple[PyTree, PyTree]:
    """``epochs`` passes of minibatch adam on the squared error to ``targets``.

    Args:
      value: ``value(params, obs) -> [N]``.
      tx: the critic's optimiser.
      params, opt_state: the critic's parameters and optimiser state.
      obs: ``[N, ...]`` observations; targets: ``[N]`` value targets.
      key: shuffling key.
      epochs: passes over the data.
      minibatch: minibatch size (must divide N).

    Returns:
      The new ``(params, opt_state)``.
    """
    n = targets.shape[0]
    n_mb = n // minibatch

    def loss(p, o, t):
        return jnp.mean((value(p, o) - t) ** 2)

    def epoch(carry, perm):
        o = obs[perm].reshape((n_mb, minibatch) + obs.shape[1:])
        t = targets[perm].reshape(n_mb, minibatch)

        def mb_step(c, xs):
            p, s = c
            g = jax.grad(loss)(p, *xs)
            u, s = tx.update(g, s, p)
            return (optax.apply_updates(p, u), s), None

        return jax.lax.scan(mb_step, carry, (o, t))[0], None

    return jax.lax.scan(epoch, (params, opt_state), permutations(key, epochs, n))[0]
