"""Policy and value networks (flax.linen MLPs with orthogonal initialisation)."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

__all__ = ["MLP"]

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
            x = nn.Dense(h, kernel_init=nn.initializers.orthogonal(np.sqrt(2.0)))(x)
            x = act(x)
        return nn.Dense(self.out, kernel_init=nn.initializers.orthogonal(self.out_scale))(x)
