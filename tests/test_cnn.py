"""The patch (im2col) CNN against flax.linen.Conv with the same parameters."""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from npgjax.rl import CNN, MLP, make_networks
from npgjax.rl.networks import PatchConv, orthogonal

pytestmark = pytest.mark.usefixtures("full_f32_matmuls")  # conv vs patch matmul, not TF32


class ConvCNN(nn.Module):
    """The reference: CNN's layers with flax.linen.Conv (auto-named Conv_0, Conv_1, MLP_0)."""

    hidden: Sequence[int]
    out: int
    strides: Sequence[int]

    @nn.compact
    def __call__(self, x):
        lead = x.shape[:-3]
        x = x.reshape((-1,) + x.shape[-3:])
        for c, s in zip((16, 32), self.strides, strict=True):
            x = nn.relu(nn.Conv(c, (3, 3), strides=s, kernel_init=orthogonal(np.sqrt(2.0)))(x))
        return MLP(self.hidden, self.out, "relu")(x.reshape(lead + (-1,)))


def _random_like(params, seed, scale=0.3):
    rng = np.random.default_rng(seed)  # numpy: jax.random compiles slowly on the CPU
    return jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape) * scale, jnp.float32),
                        params)


def test_same_parameter_tree_and_init_as_flax_conv():
    x = jnp.zeros((1, 10, 10, 4))
    got = jax.jit(CNN((8,), 3).init)(jax.random.PRNGKey(0), x)
    want = jax.jit(ConvCNN((8,), 3, (1, 2)).init)(jax.random.PRNGKey(0), x)
    jax.tree.map(np.testing.assert_array_equal, got, want)  # names, shapes and values


@pytest.mark.parametrize(("shape", "strides"), [
    ((10, 10, 4), (1, 2)),   # MinAtar
    ((21, 24, 3), (2, 2)),   # odd and even sides: "SAME" pads the smaller half first
])
def test_patch_cnn_equals_flax_conv(shape, strides):
    net, ref = CNN((8,), 3), ConvCNN((8,), 3, strides)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 3, *shape)), jnp.float32)
    tree = jax.eval_shape(net.init, jax.random.PRNGKey(0), x[0])
    assert jax.tree.map(jnp.shape, tree) == jax.tree.map(
        jnp.shape, jax.eval_shape(ref.init, jax.random.PRNGKey(0), x[0]))
    # random weights and biases, so that padding and bias placement are both exercised
    params = _random_like(tree, 2)
    want = np.asarray(jax.jit(ref.apply)(params, x))
    assert want.shape == (2, 3, 3) and np.abs(want).max() > 0.1
    jitted = jax.jit(net.apply)(params, x)
    vmapped = jax.jit(jax.vmap(net.apply, (None, 0)))(params, x)
    np.testing.assert_allclose(np.asarray(jitted), want, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(vmapped), want, atol=1e-5, rtol=1e-5)


def test_patch_conv_gradients_equal_flax_conv():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 9, 8, 2)), jnp.float32)
    for stride in (1, 2):
        conv, ref = PatchConv(5, stride), nn.Conv(5, (3, 3), strides=stride)
        params = jax.eval_shape(conv.init, jax.random.PRNGKey(1), x)
        assert jax.tree.map(jnp.shape, params) == jax.tree.map(
            jnp.shape, jax.eval_shape(ref.init, jax.random.PRNGKey(1), x))
        params = _random_like(params, stride, 1.0)

        def loss(p, x, m):
            return jnp.sum(jnp.sin(m.apply(p, x)))

        got = jax.jit(jax.grad(loss, (0, 1)), static_argnums=2)(params, x, conv)
        want = jax.jit(jax.grad(loss, (0, 1)), static_argnums=2)(params, x, ref)
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-4, rtol=1e-5)


def test_strides_rule_and_bad_strides():
    x = jnp.zeros((1, 10, 10, 4))
    for shape, feats in (((10, 10, 4), 5 * 5 * 32), ((30, 40, 3), 8 * 10 * 32),
                         ((19, 40, 3), 10 * 20 * 32)):
        params = jax.eval_shape(CNN((8,), 3).init, jax.random.PRNGKey(0),
                                jnp.zeros((1, *shape)))
        assert params["params"]["MLP_0"]["Dense_0"]["kernel"].shape == (feats, 8)
    params = jax.eval_shape(CNN((8,), 3, strides=(1, 1)).init, jax.random.PRNGKey(0), x)
    assert params["params"]["MLP_0"]["Dense_0"]["kernel"].shape == (10 * 10 * 32, 8)
    with pytest.raises(ValueError, match="2 channels but 1 strides"):
        CNN((8,), 3, strides=(1,)).init(jax.random.PRNGKey(0), x)
    pi, vf = make_networks("cnn", (10, 10, 4), 3)
    assert isinstance(pi, CNN) and isinstance(vf, CNN)
