"""Policy and value networks (flax.linen, orthogonal initialisation).

``MLP`` for flat observations, ``CNN`` for images (``[H, W, C]``; its convolutions are
``PatchConv``, patches and one matmul), ``TorsoHead`` to put a linear head on any flax
torso, ``GRUNet`` (a torso, a GRU cell and a linear head) for policies with memory,
and :func:`make_networks`, which picks them for an environment and checks that they fit
its observations.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from npgjax.rl.layers import (
    _ACTIVATIONS,
    MLP,
    Dense,
    PatchConv,
    dense_dot_general,
    orthogonal,
)

__all__ = [
    "CNN", "MLP", "NETWORKS", "Dense", "GRUNet", "PatchConv", "TorsoHead", "dense_dot_general",
    "make_networks", "orthogonal",
]



class CNN(nn.Module):
    """A small convolutional torso for image observations ``[..., H, W, C]``, then an MLP.

    Two 3x3 convolutions (``channels``: 16 and 32; padding "SAME"; relu), the first with
    stride 2 when the image is at least 20 pixels on a side, the second with stride 2;
    flattened; then :class:`MLP` layers. MinAtar's 10x10 frames give 5x5x32 = 800
    features, Pong-misc's 30x40 frames 8x10x32 = 2,560. The convolutions are
    :class:`PatchConv` (the function and parameter tree of ``flax.linen.Conv``, ``Conv_0``
    and ``Conv_1``, then ``MLP_0``), many times faster in a natural step on the CPU.

    Attributes:
      hidden: widths of the dense layers after the convolutions.
      out: output width.
      activation: ``"tanh"``, ``"relu"`` or ``"gelu"`` (dense layers; convolutions use relu).
      out_scale: gain of the output layer's orthogonal init.
      channels: output channels of each convolution.
      strides: the stride of each convolution (``None``: the rule above, and 2 for any
        further ones).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from npgjax.rl import CNN
      >>> net = CNN(hidden=(32,), out=3)
      >>> params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 10, 10, 4)))
      >>> net.apply(params, jnp.zeros((5, 10, 10, 4))).shape
      (5, 3)
      >>> params["params"]["Conv_1"]["kernel"].shape
      (3, 3, 16, 32)
    """

    hidden: Sequence[int]
    out: int
    activation: str = "relu"
    out_scale: float = 1.0
    channels: Sequence[int] = (16, 32)
    strides: Sequence[int] | None = None

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        if x.ndim < 3:
            raise ValueError(f"CNN needs image observations [..., H, W, C], got shape {x.shape}.")
        lead = x.shape[:-3]
        x = x.reshape((-1,) + x.shape[-3:])
        strides = self.strides
        if strides is None:
            strides = [2 if min(x.shape[1:3]) >= 20 else 1] + [2] * (len(self.channels) - 1)
        if len(strides) != len(self.channels):
            raise ValueError(f"CNN has {len(self.channels)} channels but {len(strides)} strides.")
        for i, (c, s) in enumerate(zip(self.channels, strides, strict=True)):
            x = nn.relu(PatchConv(c, s, name=f"Conv_{i}")(x))
        x = x.reshape(lead + (-1,))
        return MLP(self.hidden, self.out, self.activation, self.out_scale)(x)


class TorsoHead(nn.Module):
    """Any flax module as a torso, with a linear head of width ``out``.

    Attributes:
      torso: a flax module mapping a batch of observations to features ``[..., F]``.
      out: output width.
      out_scale: gain of the head's orthogonal init.

    Examples:
      >>> import jax, jax.numpy as jnp, flax.linen as nn
      >>> from npgjax.rl import TorsoHead
      >>> net = TorsoHead(nn.Dense(8), out=2)
      >>> params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 3)))
      >>> net.apply(params, jnp.zeros((4, 3))).shape
      (4, 2)
    """

    torso: nn.Module
    out: int
    out_scale: float = 1.0

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        return Dense(self.out, kernel_init=orthogonal(self.out_scale))(self.torso(x))


class GRUNet(nn.Module):
    """A recurrent network: torso features, a GRU cell, a linear head.

    One call is one time step: ``(carry [..., H], obs) -> (carry, out [..., out])``.
    Unroll it over time with :func:`npgjax.rl.recurrent.unroll`.

    Attributes:
      torso: a flax module (or function) mapping observations to features ``[..., F]``.
      hidden_size: width ``H`` of the GRU's hidden state.
      out: output width.
      out_scale: gain of the head's orthogonal init.

    Examples:
      >>> import jax, jax.numpy as jnp, flax.linen as nn
      >>> from npgjax.rl.networks import GRUNet
      >>> net = GRUNet(nn.Dense(8), hidden_size=4, out=2)
      >>> h = jnp.zeros((5, 4))
      >>> params = net.init(jax.random.PRNGKey(0), h, jnp.zeros((5, 3)))
      >>> [a.shape for a in net.apply(params, h, jnp.zeros((5, 3)))]
      [(5, 4), (5, 2)]
    """

    torso: Any
    hidden_size: int
    out: int
    out_scale: float = 1.0

    @nn.compact
    def __call__(self, carry: jnp.ndarray, x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        cell = nn.GRUCell(self.hidden_size, recurrent_kernel_init=orthogonal())
        carry, y = cell(carry, self.torso(x))
        return carry, Dense(self.out, kernel_init=orthogonal(self.out_scale))(y)

    def initial_carry(self, n: int) -> jnp.ndarray:
        """The zero hidden state of ``n`` environments, ``[n, hidden_size]``."""
        return jnp.zeros((n, self.hidden_size), jnp.float32)


#: The built-in networks of the ``network`` option ("auto" picks mlp, images flattened,
#: see :func:`make_networks`; "gru" puts a GRU cell on top of the mlp or cnn torso).
NETWORKS = ("auto", "mlp", "cnn", "gru")


def _gru_pair(obs_shape, out, hidden, activation, policy_torso, critic_torso):
    def torso(given):
        if given is not None:
            return given
        *widths, h = hidden
        if len(obs_shape) == 3:
            return nn.Sequential([CNN(tuple(widths), h, "relu", np.sqrt(2.0)), nn.relu])
        nd = max(1, len(obs_shape))
        return nn.Sequential([MLP(tuple(widths), h, activation, np.sqrt(2.0), nd),
                              _ACTIVATIONS[activation]])

    H = int(hidden[-1])
    return (GRUNet(torso(policy_torso), H, out, 0.01),
            GRUNet(torso(critic_torso), H, 1, 1.0))


def make_networks(
    network: str,
    obs_shape: tuple[int, ...],
    out: int,
    *,
    hidden: Sequence[int] = (64, 64),
    activation: str = "tanh",
    policy_torso: nn.Module | None = None,
    critic_torso: nn.Module | None = None,
) -> tuple[nn.Module, nn.Module]:
    """The policy and critic networks for observations of ``obs_shape``.

    ``"auto"`` is ``"mlp"`` for every observation, images included (flattened), by
    measurement (``benchmarks/networks.py``, 2 AMD EPYC cores): with npg's defaults the
    cnn trains 12-27x fewer env steps per second than the mlp (Breakout-MinAtar 381
    against 10,219; Pong-misc 112 against 1,388). At equal env steps it was level on
    Breakout-MinAtar and ahead on Pong-misc (train return 394 against 246 after 25,600
    steps, 4 seeds), but the mlp given 6x the steps in less wall time reached 954
    (benchmarks/README.md). ``"cnn"`` is one word away, e.g. on an accelerator.

    Args:
      network: ``"auto"`` (``"mlp"``, above), ``"mlp"`` (observations flattened),
        ``"cnn"`` (:class:`CNN`, image observations ``[H, W, C]`` only) or ``"gru"``
        (:class:`GRUNet`: the mlp torso, or the cnn one for images, of widths
        ``hidden``, then a GRU cell of width ``hidden[-1]``).
      obs_shape: shape of one observation.
      out: the policy's output width (logits or Gaussian means).
      hidden: hidden widths.
      activation: hidden activation.
      policy_torso: any flax module to use as the policy's torso instead (a linear head
        of width ``out`` is added).
      critic_torso: likewise for the critic (a linear head of width 1 is added).

    Returns:
      ``(policy_net, critic_net)``, each mapping observations ``[..., *obs_shape]`` to
      ``[..., width]``.

    Raises:
      ValueError: an unknown network, or one that does not fit the observations (a CNN
        on observations that are not images, or a torso that fails on a dummy batch).

    Examples:
      >>> from npgjax.rl import make_networks
      >>> pi, vf = make_networks("auto", (10, 10, 4), 3)
      >>> type(pi).__name__, type(make_networks("cnn", (10, 10, 4), 3)[0]).__name__
      ('MLP', 'CNN')
    """
    if network not in NETWORKS:
        raise ValueError(f"unknown network {network!r}; choose one of {NETWORKS}.")
    image = len(obs_shape) == 3
    if network == "auto":  # see the docstring: the cnn is far slower on the CPU
        network = "mlp"
    if network == "gru":
        pi, vf = _gru_pair(obs_shape, out, hidden, activation, policy_torso, critic_torso)
        _check_fits(pi, vf, obs_shape)
        return pi, vf
    if network == "cnn" and not image:
        raise ValueError(f"network 'cnn' needs image observations [H, W, C]; this "
                         f"environment's observations have shape {obs_shape} (use 'mlp').")
    if network == "cnn":
        pi, vf = CNN(tuple(hidden), out, "relu", 0.01), CNN(tuple(hidden), 1, "relu", 1.0)
    else:
        nd = max(1, len(obs_shape))
        pi = MLP(tuple(hidden), out, activation, 0.01, nd)
        vf = MLP(tuple(hidden), 1, activation, 1.0, nd)
    if policy_torso is not None:
        pi = TorsoHead(policy_torso, out, 0.01)
    if critic_torso is not None:
        vf = TorsoHead(critic_torso, 1, 1.0)
    _check_fits(pi, vf, obs_shape)
    return pi, vf


def _check_fits(pi: nn.Module, vf: nn.Module, obs_shape: tuple[int, ...]) -> None:
    # Abstract throughout: no eager op, so nothing is compiled (a cold start is shorter).
    dummy = jax.ShapeDtypeStruct((2, *obs_shape), jnp.result_type(float))

    def init(net: nn.Module, x: jax.Array) -> Any:
        args = (net.initial_carry(2), x) if isinstance(net, GRUNet) else (x,)
        return net.init_with_output(jax.random.PRNGKey(0), *args)[0]

    for name, net, width in (("policy", pi, None), ("critic", vf, 1)):
        try:
            out = jax.eval_shape(lambda x, n=net: init(n, x), dummy)
            out = out[1] if isinstance(net, GRUNet) else out
        except Exception as e:
            raise ValueError(f"the {name} network does not fit observations of shape "
                             f"{obs_shape}: {type(e).__name__}: {e}") from e
        if out.shape[:1] != (2,) or out.ndim != 2 or (width and out.shape[-1] != width):
            raise ValueError(f"the {name} network maps a batch of 2 observations of shape "
                             f"{obs_shape} to shape {out.shape}; expected (2, width).")
