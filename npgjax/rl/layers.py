"""Building blocks of the networks: a vmap-safe orthogonal initializer, the MLP and a
3x3 convolution written as patches and one matmul (``PatchConv``).

:mod:`npgjax.rl.networks` assembles them into policy and value networks and re-exports
them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["MLP", "PatchConv", "orthogonal"]


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
      obs_ndim: number of trailing axes of one observation; they are flattened (1 for
        flat observations).

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
    obs_ndim: int = 1

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        if self.obs_ndim != 1:  # flatten each observation
            x = x.reshape(x.shape[: x.ndim - self.obs_ndim] + (-1,))
        act = _ACTIVATIONS[self.activation]
        for h in self.hidden:
            x = nn.Dense(h, kernel_init=orthogonal(np.sqrt(2.0)))(x)
            x = act(x)
        return nn.Dense(self.out, kernel_init=orthogonal(self.out_scale))(x)


def _same(n: int, s: int) -> tuple[int, tuple[int, int]]:
    # XLA's "SAME" for a 3-wide window: out ceil(n/s), total pad split smaller half first
    out = -(-n // s)
    total = max((out - 1) * s + 3 - n, 0)
    return out, (total // 2, total - total // 2)


class PatchConv(nn.Module):
    """A 3x3 convolution, padding "SAME", as patches and one matmul (im2col).

    The same function and parameters (``kernel [3, 3, C_in, C_out]``, ``bias``) as
    ``flax.linen.Conv(features, (3, 3), strides)``, written with slices, one concatenate
    and one matmul: XLA's CPU convolution is many times slower once linearised inside
    a loop (the conjugate-gradient loop of a natural step; see benchmarks/README.md).

    Attributes:
      features: output channels.
      stride: the same stride on both spatial axes.
      kernel_init: initializer of the ``[3, 3, C_in, C_out]`` kernel.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from npgjax.rl.networks import PatchConv
      >>> conv = PatchConv(8, stride=2)
      >>> params = conv.init(jax.random.PRNGKey(0), jnp.zeros((1, 10, 9, 3)))
      >>> conv.apply(params, jnp.zeros((4, 10, 9, 3))).shape
      (4, 5, 5, 8)
    """

    features: int
    stride: int = 1
    kernel_init: Callable[..., jax.Array] = orthogonal(np.sqrt(2.0))

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        c, s = x.shape[-1], self.stride
        kernel = self.param("kernel", self.kernel_init, (3, 3, c, self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        (oh, ph), (ow, pw) = _same(x.shape[-3], s), _same(x.shape[-2], s)
        x = jnp.pad(x, ((0, 0),) * (x.ndim - 3) + (ph, pw, (0, 0)))
        x = jnp.concatenate([x[..., i:i + (oh - 1) * s + 1:s, j:j + (ow - 1) * s + 1:s, :]
                             for i in range(3) for j in range(3)], -1)
        return x @ kernel.reshape(9 * c, self.features) + bias
