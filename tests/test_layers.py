"""dense_dot_general: the same product as lax.dot_general, its narrow-layer gradient
kept an [out, in] dot on the CPU, and the XLA behaviour that makes it worth having."""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from npgjax.rl import MLP, dense_dot_general

DENSE = (((1,), (0,)), ((), ()))


def _weight_grad(dot_general, x, w, ct):
    return jax.vjp(lambda w: dot_general(x, w, DENSE), w)[1](ct)[0]


def _dot_shapes(compiled_text: str) -> list[str]:
    """Output shapes of the dots in compiled HLO text, e.g. ['f32[2,64]']."""
    return re.findall(r"= (f32\[[\d,]*\])\{[\d,]*\} dot\(", compiled_text)


@pytest.mark.parametrize("n_in,n_out", [(64, 2), (64, 3), (4, 64), (64, 64), (64, 1)])
def test_same_product_and_derivatives(n_in, n_out):
    kx, kw, kc, kt = jax.random.split(jax.random.PRNGKey(0), 4)
    x = jax.random.normal(kx, (3, 33, n_in))  # leading axes: a Dense layer's batch
    w = jax.random.normal(kw, (n_in, n_out))
    ct = jax.random.normal(kc, (3, 33, n_out))
    dims = (((2,), (0,)), ((), ()))

    def everything(dot_general):
        def layer(x, w):
            return dot_general(x, w, dims)

        y, vjp = jax.vjp(layer, x, w)
        tangent = jax.jvp(layer, (x, w), (x[::-1], jax.random.normal(kt, w.shape)))[1]
        return y, tangent, *vjp(ct)

    ours = jax.jit(lambda: everything(dense_dot_general))()
    ref = jax.jit(lambda: everything(jax.lax.dot_general))()
    for a, b in zip(ours, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)
    # ...and under vmap over seeds, as the trainers run it
    xs, ws, cts = (jnp.stack([v, 2 * v]) for v in (x[0, :, :], w, ct[0, :, :]))
    got = jax.jit(jax.vmap(lambda x, w, c: _weight_grad(dense_dot_general, x, w, c)))(xs, ws, cts)
    want = jax.vmap(lambda x, w, c: _weight_grad(jax.lax.dot_general, x, w, c))(xs, ws, cts)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_narrow_layer_gradient_is_an_out_by_in_dot():
    x, w, ct = jnp.ones((1024, 64)), jnp.ones((64, 2)), jnp.ones((1024, 2))
    text = jax.jit(lambda w: _weight_grad(dense_dot_general, x, w, ct)).lower(w).compile()
    assert _dot_shapes(text.as_text()) == ["f32[2,64]"]


def test_xla_still_folds_the_transpose():
    """The reason for dense_dot_general. When this fails, XLA no longer turns JAX's
    (ct^T x)^T into one [in, out] dot: time benchmarks/dense_grad.py and, if its lax
    rows are as fast, delete dense_dot_general."""
    x, w, ct = jnp.ones((1024, 64)), jnp.ones((64, 2)), jnp.ones((1024, 2))
    text = jax.jit(lambda w: _weight_grad(jax.lax.dot_general, x, w, ct)).lower(w).compile()
    assert _dot_shapes(text.as_text()) == ["f32[64,2]"]


def test_only_plain_narrow_dense_layers_on_the_cpu_change():
    x, w = jnp.ones((8, 64)), jnp.ones((64, 2))

    def barrier_in(f, *args, platforms=("cpu",)):
        exported = jax.export.export(jax.jit(f), platforms=platforms)(*args)
        return "optimization_barrier" in exported.mlir_module()

    assert barrier_in(lambda x, w: dense_dot_general(x, w, DENSE), x, w)
    assert not barrier_in(lambda x, w: dense_dot_general(x, w, DENSE), x, w,
                          platforms=("cuda",))
    assert not barrier_in(lambda x, w: dense_dot_general(x, w.T, DENSE), x[:, :2], w)  # widens
    assert not barrier_in(lambda x, w: dense_dot_general(x, w[:, :1], DENSE), x, w)
    batched = (((2,), (0,)), ((0,), (2,)))  # not a dense layer's: passed through
    xb, wb = jnp.ones((3, 8, 64)), jnp.ones((64, 2, 3))
    assert not barrier_in(lambda x, w: dense_dot_general(x, w, batched), xb, wb)
    np.testing.assert_array_equal(dense_dot_general(xb, wb, batched),
                                  jax.lax.dot_general(xb, wb, batched))


def test_mlp_parameters_and_outputs_as_with_flax_dense():
    class FlaxMLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            from npgjax.rl import orthogonal

            x = nn.tanh(nn.Dense(64, kernel_init=orthogonal(np.sqrt(2.0)))(x))
            return nn.Dense(2, kernel_init=orthogonal(0.01))(x)

    x = jax.random.normal(jax.random.PRNGKey(1), (16, 4))
    ours, ref = MLP(hidden=(64,), out=2, out_scale=0.01), FlaxMLP()
    params = ours.init(jax.random.PRNGKey(0), x)
    ref_params = ref.init(jax.random.PRNGKey(0), x)
    assert jax.tree.structure(params) == jax.tree.structure(ref_params)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params), strict=True):
        np.testing.assert_array_equal(a, b)
    g_ours = jax.jit(jax.grad(lambda p: ours.apply(p, x).sum()))(params)
    g_ref = jax.jit(jax.grad(lambda p: ref.apply(p, x).sum()))(params)
    for a, b in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_dense_is_flax_dense_and_skips_the_initializer_on_apply():
    from npgjax.rl import orthogonal
    from npgjax.rl.layers import Dense

    calls = []

    def counting(key, shape, dtype=jnp.float32):
        calls.append(shape)
        return orthogonal(0.5)(key, shape, dtype)

    x = jax.random.normal(jax.random.PRNGKey(1), (16, 64))
    ours = Dense(2, kernel_init=counting)
    ref = nn.Dense(2, kernel_init=orthogonal(0.5), dot_general=dense_dot_general)
    params = ours.init(jax.random.PRNGKey(0), x)
    assert calls == [(64, 2)]
    ref_params = ref.init(jax.random.PRNGKey(0), x)
    assert jax.tree.structure(params) == jax.tree.structure(ref_params)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params), strict=True):
        np.testing.assert_array_equal(a, b)
    # The same program: equal bits, forward and gradient, under jit.
    for f in (lambda m, p: m.apply(p, x), lambda m, p: jax.grad(lambda q: m.apply(q, x).sum())(p)):
        for a, b in zip(jax.tree.leaves(jax.jit(lambda p, m=ours: f(m, p))(params)),
                        jax.tree.leaves(jax.jit(lambda p, m=ref: f(m, p))(params)), strict=True):
            np.testing.assert_array_equal(a, b)
    assert calls == [(64, 2)]  # apply read the kernel; flax's param() would trace init
    bad = {"params": dict(params["params"], kernel=jnp.zeros((63, 2)))}
    with pytest.raises(ValueError, match="'kernel' has shape \\(63, 2\\), the layer needs"):
        ours.apply(bad, x)
