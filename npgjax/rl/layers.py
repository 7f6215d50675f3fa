"""Building blocks of the networks: a vmap-safe orthogonal initializer, the matmul of
the dense layers (``dense_dot_general``), the dense layer, the MLP and a 3x3
convolution written as patches and one matmul (``PatchConv``).

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

__all__ = ["MLP", "Dense", "PatchConv", "dense_dot_general", "orthogonal"]


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


def dense_dot_general(
    lhs: jax.Array,
    rhs: jax.Array,
    dimension_numbers: Any,
    precision: Any = None,
    preferred_element_type: Any = None,
    **kwargs: Any,
) -> jax.Array:
    """``lax.dot_general`` for ``nn.Dense(..., dot_general=dense_dot_general)``.

    The same product. On the CPU, a layer that narrows (``1 < out < in``: a policy head)
    gets a faster weight gradient. JAX transposes ``x @ W`` with respect to ``W`` as
    ``(ct^T x)^T``, and XLA folds that transpose into one ``[in, out]`` dot, which its
    CPU backend runs slowly when ``out`` is small: 70-89 us instead of 6-9 us for a
    ``64 x 2`` head on 1,024 samples, once per Fisher-vector product; 0.92-0.97x the
    time per update of TRPO on CartPole-v1 with the RL-zoo settings (2-core AMD EPYC,
    jax 0.10.2, ``benchmarks/dense_grad.py``). Here the kernel's transpose sits behind
    ``lax.optimization_barrier``, so the gradient stays an ``[out, in]`` dot followed by
    a transpose. Every other layer and platform, and any call that is not a plain dense
    layer's, gets ``lax.dot_general`` unchanged. The parameters are the same
    (``kernel`` is ``[in, out]``), the result equal up to floating-point rounding (the
    same bits in most compiles).

    Delete it when XLA's CPU dot is as fast either way round. ``tests/test_layers.py``
    fails when XLA stops folding the transpose, and ``benchmarks/dense_grad.py`` times
    both.

    Args:
      lhs: the layer's input.
      rhs: the kernel.
      dimension_numbers: as for ``jax.lax.dot_general``.
      precision: as for ``jax.lax.dot_general``.
      preferred_element_type: as for ``jax.lax.dot_general``.
      **kwargs: passed on to ``jax.lax.dot_general``.

    Returns:
      ``lax.dot_general(lhs, rhs, dimension_numbers, ...)``.

    Examples:
      >>> import flax.linen as nn, jax, jax.numpy as jnp
      >>> from npgjax.rl import dense_dot_general
      >>> head = nn.Dense(2, dot_general=dense_dot_general)
      >>> params = head.init(jax.random.PRNGKey(0), jnp.zeros((1, 64)))
      >>> params["params"]["kernel"].shape
      (64, 2)
    """
    kw = dict(precision=precision, preferred_element_type=preferred_element_type, **kwargs)
    (contract, kernel_contract), batch = dimension_numbers
    plain = (rhs.ndim != 2 or tuple(kernel_contract) != (0,) or any(map(len, batch))
             or not 1 < rhs.shape[1] < rhs.shape[0])
    if plain:
        return jax.lax.dot_general(lhs, rhs, dimension_numbers, **kw)

    def on_cpu(lhs: jax.Array, rhs: jax.Array) -> jax.Array:
        kernel_t = jax.lax.optimization_barrier(rhs.T)  # [out, in]: its gradient stays so
        return jax.lax.dot_general(lhs, kernel_t, ((contract, (1,)), ((), ())), **kw)

    return jax.lax.platform_dependent(
        lhs, rhs, cpu=on_cpu,
        default=lambda lhs, rhs: jax.lax.dot_general(lhs, rhs, dimension_numbers, **kw))


def _param(module: nn.Module, name: str, init: Callable[..., jax.Array],
           shape: tuple[int, ...]) -> jax.Array:
    """``module.param(name, init, shape)``, whose existing value is checked against
    ``shape`` directly. flax checks it against ``jax.eval_shape`` of ``init`` on every
    apply; for the orthogonal initializer that traces a QR decomposition per parameter
    and call (about 2 ms each: 0.1-0.3 s of tracing a training chunk)."""
    if not module.has_variable("params", name):
        return module.param(name, init, shape, jnp.float32)
    value = nn.meta.unbox(module.get_variable("params", name))
    if jnp.shape(value) != shape:
        raise ValueError(f"{type(module).__name__} {module.name!r}: parameter {name!r} has "
                         f"shape {jnp.shape(value)}, the layer needs {shape}.")
    return value


class Dense(nn.Module):
    """``flax.linen.Dense(features, kernel_init=..., dot_general=dense_dot_general)``.

    The same parameters (``kernel [in, features]``, ``bias``, under the same names) and
    the same operations, hence the same results; applying it reads the parameters
    without re-tracing their initializer (see ``_param`` in the source), which makes
    tracing a training chunk with the RL-zoo TRPO settings 0.1-0.3 s shorter.

    Attributes:
      features: output width.
      kernel_init: initializer of the kernel (default :func:`orthogonal`, unlike flax's
        LeCun normal).
      bias_init: initializer of the bias (zeros).

    Raises:
      ValueError: on apply, when a parameter's shape is not the layer's.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from npgjax.rl.layers import Dense
      >>> params = Dense(3).init(jax.random.PRNGKey(0), jnp.zeros((1, 4)))
      >>> params["params"]["kernel"].shape
      (4, 3)
    """

    features: int
    kernel_init: Callable[..., jax.Array] = orthogonal()
    bias_init: Callable[..., jax.Array] = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        kernel = _param(self, "kernel", self.kernel_init, (jnp.shape(x)[-1], self.features))
        bias = _param(self, "bias", self.bias_init, (self.features,))
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=None)
        y = dense_dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())), precision=None)
        return y + jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))


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
            x = act(Dense(h, kernel_init=orthogonal(np.sqrt(2.0)))(x))
        return Dense(self.out, kernel_init=orthogonal(self.out_scale))(x)


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
        kernel = _param(self, "kernel", self.kernel_init, (3, 3, c, self.features))
        bias = _param(self, "bias", nn.initializers.zeros, (self.features,))
        (oh, ph), (ow, pw) = _same(x.shape[-3], s), _same(x.shape[-2], s)
        x = jnp.pad(x, ((0, 0),) * (x.ndim - 3) + (ph, pw, (0, 0)))
        x = jnp.concatenate([x[..., i:i + (oh - 1) * s + 1:s, j:j + (ow - 1) * s + 1:s, :]
                             for i in range(3) for j in range(3)], -1)
        return x @ kernel.reshape(9 * c, self.features) + bias
