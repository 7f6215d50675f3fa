"""Policy and value networks (flax.linen MLPs with orthogonal initialisation)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["MLP", "orthogonal"]


@jax.custom_batching.sequential_vmap
def _qr(z: jax.Array) -> tuple[jax.Array, jax.Array]:
    # Under vmap, one QR per batch element in a loop. jaxlib's batched LAPACK kernels
    # split the batch over XLA's intra-op CPU pool and block a pool thread while they
    # wait; two running at once on a 2-thread pool deadlock (seen in vmap(init) over
    # seeds: the process hangs forever with every thread idle).
    return jnp.linalg.qr(z)


def orthogonal(scale: float = 1.0) -> Callable[..., jax.Array]:
    """``jax.nn.initializers.orthogonal(scale)``, safe to vmap on the CPU.

    The same draw as jax's initializer (the values are equal for the same key), with
    the QR decomposition run one matrix at a time under ``jax.vmap``: jaxlib's batched
    CPU QR can deadlock when two run concurrently (see the source).

    Args:
      scale: gain multiplying the orthogonal matrix.

    Returns:
      An initializer ``init(key, shape, dtype=jnp.float32)`` for shapes of rank 2 or
      more, orthogonal over the last axis.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from npgjax.rl import orthogonal
      >>> w = orthogonal()(jax.random.PRNGKey(0), (3, 3))
      >>> bool(jnp.allclose(w @ w.T, jnp.eye(3), atol=1e-5))
      True
    """

    def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        shape = tuple(shape)
        if len(shape) < 2:
            raise ValueError(f"orthogonal init needs a shape of rank >= 2, got {shape}.")
        n, m = math.prod(shape) // shape[-1], shape[-1]
        z = jax.random.normal(key, (max(n, m), min(n, m)), dtype)
        q, r = _qr(z)
        q = q * jnp.sign(jnp.diagonal(r))[None, :]
        if n < m:
            q = q.T
        return jnp.asarray(scale, dtype) * q.reshape(shape)

    return init

_ACTIVATIONS = {"tanh": nn.tanh, "relu": nn.relu, "gelu": nn.gelu}


class MLP(nn.Module):
    """A multilayer perceptron with orthogonal weights and zero biases.

    Attributes:
      hidden: widths of the hidden layers.
      out: output width.
      activation: ``"tanh"``, ``"relu"`` or ``"gelu"``.
      out_scale: gain of the output layer's orthogonal init (0.01 for a policy head,
        1.0 for a value head).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from npgjax.rl import MLP
      >>> net = MLP(hidden=(8,), out=2)
      >>> params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 3)))
      >>> net.apply(params, jnp.zeros((5, 3))).shape
      (5, 2)
    """

    hidden: Sequence[int]
    out: int
    activation: str = "tanh"
    out_scale: float = 1.0

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        act = _ACTIVATIONS[self.activation]
        for h in self.hidden:
            x = nn.Dense(h, kernel_init=orthogonal(np.sqrt(2.0)))(x)
            x = act(x)
        return nn.Dense(self.out, kernel_init=orthogonal(self.out_scale))(x)
