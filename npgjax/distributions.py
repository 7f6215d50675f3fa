"""Policy distributions with closed-form Fisher-vector products in their own parameters.

Both distributions are pytrees (their parameters are the leaves), so they pass through
`jax.jit`, `jax.vmap`, `jax.jvp` and `jax.linear_transpose`. The analytic Fisher in
:mod:`npgjax.fisher` pushes a parameter tangent through the network into a tangent of
the distribution, applies :meth:`fisher_vector_product` there, and pulls it back.

Any other distribution object works with the empirical Fisher as long as it has a
``log_prob`` method (distrax-like duck typing). For the analytic Fisher, an object
without ``fisher_vector_product`` falls back to the Hessian of its KL divergence in its
own (per-sample, low-dimensional) parameters; see :func:`distribution_fisher_vector_product`.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from npgjax._tree import host_array

Array = jax.Array

__all__ = ["Categorical", "DiagGaussian", "distribution_fisher_vector_product"]


def _check_actions(host: np.ndarray, n_act: int) -> None:
    inexact = np.issubdtype(host.dtype, np.inexact)
    if inexact and (not np.all(np.isfinite(host)) or np.any(host != np.floor(host))):
        raise ValueError(
                "Categorical.log_prob: actions must be integers; got non-integer values "
                f"such as {host[(host != np.floor(host)) | ~np.isfinite(host)].flat[0]}."
            )
    lo, hi = host.min(), host.max()
    if lo < 0 or hi >= n_act:
        raise ValueError(
            f"Categorical.log_prob: actions must lie in [0, {n_act}); got values from "
            f"{lo} to {hi}."
        )


@jax.tree_util.register_pytree_node_class
class Categorical:
    r"""Categorical distribution over ``A`` actions, parametrised by unnormalised logits.

    The Fisher information in the logits is :math:`F = \mathrm{diag}(p) - p p^\top`
    (rank ``A - 1``: adding a constant to every logit changes nothing).

    Args:
      logits: array of shape ``[..., A]``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from npgjax import Categorical
      >>> d = Categorical(jnp.zeros((2, 3)))
      >>> d.log_prob(jnp.array([0, 2])).round(4)
      Array([-1.0986, -1.0986], dtype=float32)
    """

    def __init__(self, logits: Array):
        logits = jnp.asarray(logits)
        if logits.ndim < 1:
            raise ValueError(f"Categorical logits need shape [..., A]; got shape {logits.shape}.")
        self.logits = logits

    def tree_flatten(self):
        return (self.logits,), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        obj = object.__new__(cls)
        obj.logits = children[0]
        return obj

    def __repr__(self) -> str:
        return f"Categorical(logits={self.logits!r})"

    @property
    def batch_shape(self) -> tuple[int, ...]:
        """Leading shape of the logits (all but the last axis)."""
        return tuple(self.logits.shape[:-1])

    @property
    def log_probs(self) -> Array:
        """Normalised log-probabilities of every action, ``[..., A]``."""
        return jax.nn.log_softmax(self.logits, axis=-1)

    @property
    def probs(self) -> Array:
        """Probabilities of every action, ``[..., A]``."""
        return jax.nn.softmax(self.logits, axis=-1)

    def log_prob(self, actions: Array) -> Array:
        """log pi(a) for integer actions of shape ``batch_shape``.

        Actions must be integers in ``[0, A)`` (integer-valued floats are accepted).
        Outside ``jit`` anything else raises ``ValueError``; under ``jit`` the log-prob
        of such an action is NaN, and so is its gradient, so that npgjax's transforms
        return a zero update with a flag instead of silently using a wrong action (a
        ``-1`` would otherwise index the last action).
        """
        n_act = self.logits.shape[-1]
        host = host_array(actions)
        actions = jnp.asarray(actions)
        if actions.shape != self.batch_shape:
            raise ValueError(
                f"Categorical.log_prob: actions have shape {actions.shape} but the "
                f"distribution has batch shape {self.batch_shape}."
            )
        if host is not None and host.size:
            _check_actions(host, n_act)
        if jnp.issubdtype(actions.dtype, jnp.inexact):
            valid = (actions == jnp.floor(actions)) & (actions >= 0) & (actions < n_act)
        else:
            valid = (actions >= 0) & (actions < n_act)
        idx = jnp.where(valid, actions, 0).astype(jnp.int32)
        lp = jnp.take_along_axis(self.log_probs, idx[..., None], axis=-1)[..., 0]
        # Times NaN (not a where): the NaN reaches the gradient and the Fisher too.
        return lp * jnp.where(valid, 1.0, jnp.nan).astype(lp.dtype)

    def entropy(self) -> Array:
        """Entropy per batch element."""
        lp = self.log_probs
        return -jnp.sum(jnp.exp(lp) * lp, axis=-1)

    def kl(self, other: Categorical) -> Array:
        """KL(self || other), per batch element."""
        lp, lq = self.log_probs, other.log_probs
        return jnp.sum(jnp.exp(lp) * (lp - lq), axis=-1)

    kl_divergence = kl

    def sample(self, key: Array, sample_shape: tuple[int, ...] = ()) -> Array:
        """Integer actions of shape ``sample_shape + batch_shape``."""
        return jax.random.categorical(key, self.logits, shape=sample_shape + self.batch_shape)

    def mode(self) -> Array:
        """The most likely action."""
        return jnp.argmax(self.logits, axis=-1)

    def fisher_vector_product(self, tangent: Categorical) -> Categorical:
        """``(diag(p) - p p^T) t`` for a logits tangent ``t``, per batch element."""
        p = self.probs
        t = tangent.logits
        return Categorical(p * t - p * jnp.sum(p * t, axis=-1, keepdims=True))

    def fisher_matrix(self) -> Array:
        """Dense per-element Fisher ``[..., A, A]`` in the logits."""
        p = self.probs
        eye = jnp.eye(p.shape[-1], dtype=p.dtype)
        return p[..., :, None] * eye - p[..., :, None] * p[..., None, :]


@jax.tree_util.register_pytree_node_class
class DiagGaussian:
    r"""Diagonal Gaussian over ``D``-dimensional actions, parametrised by mean and log std.

    ``log_std`` is broadcast to the shape of ``mean``, so a state-independent log std
    vector of shape ``[D]`` is fine. In ``(mu, log sigma)`` the Fisher is the closed
    form :math:`\mathrm{diag}(1/\sigma^2, 2)` per dimension.

    Args:
      mean: array of shape ``[..., D]``.
      log_std: array broadcastable to ``mean.shape``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from npgjax import DiagGaussian
      >>> d = DiagGaussian(jnp.zeros((1, 2)), jnp.zeros(2))
      >>> round(float(d.log_prob(jnp.zeros((1, 2)))[0]), 4)
      -1.8379
    """

    def __init__(self, mean: Array, log_std: Array):
        mean = jnp.asarray(mean)
        if mean.ndim < 1:
            raise ValueError(f"DiagGaussian mean needs shape [..., D]; got shape {mean.shape}.")
        try:
            log_std = jnp.broadcast_to(jnp.asarray(log_std, mean.dtype), mean.shape)
        except ValueError as e:
            raise ValueError(
                f"DiagGaussian: log_std of shape {jnp.shape(log_std)} does not broadcast to the "
                f"mean's shape {mean.shape}."
            ) from e
        self.mean = mean
        self.log_std = log_std

    def tree_flatten(self):
        return (self.mean, self.log_std), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        obj = object.__new__(cls)
        obj.mean, obj.log_std = children
        return obj

    def __repr__(self) -> str:
        return f"DiagGaussian(mean={self.mean!r}, log_std={self.log_std!r})"

    @property
    def batch_shape(self) -> tuple[int, ...]:
        """Leading shape of the mean (all but the action axis)."""
        return tuple(self.mean.shape[:-1])

    @property
    def std(self) -> Array:
        """Standard deviation, ``exp(log_std)``."""
        return jnp.exp(self.log_std)

    def log_prob(self, actions: Array) -> Array:
        """Sum over the action dimensions of the Gaussian log-density.

        The actions set the output's shape: the distribution may broadcast against them
        (a mean of shape ``[1, D]`` or extra leading sample axes of the actions), but the
        actions are never broadcast, so actions ``[1, D]`` against a mean ``[N, D]``
        raise ``ValueError`` instead of silently repeating one action ``N`` times.
        """
        actions = jnp.asarray(actions)
        try:
            ok = actions.ndim >= 1 and actions.shape[-1] == self.mean.shape[-1]
            ok = ok and jnp.broadcast_shapes(actions.shape, self.mean.shape) == actions.shape
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(
                f"DiagGaussian.log_prob: actions have shape {actions.shape}, which does not "
                f"match the mean's shape {self.mean.shape} (actions are not broadcast)."
            )
        z = (actions - self.mean) * jnp.exp(-self.log_std)
        return jnp.sum(-0.5 * z**2 - self.log_std - 0.5 * math.log(2 * math.pi), axis=-1)

    def entropy(self) -> Array:
        """Entropy per batch element (summed over action dimensions)."""
        return jnp.sum(self.log_std + 0.5 * (1.0 + math.log(2 * math.pi)), axis=-1)

    def kl(self, other: DiagGaussian) -> Array:
        """KL(self || other), per batch element."""
        var_ratio = jnp.exp(2 * (self.log_std - other.log_std))
        t = ((self.mean - other.mean) * jnp.exp(-other.log_std)) ** 2
        return jnp.sum(0.5 * (var_ratio + t - 1.0) - (self.log_std - other.log_std), axis=-1)

    kl_divergence = kl

    def sample(self, key: Array, sample_shape: tuple[int, ...] = ()) -> Array:
        """Actions of shape ``sample_shape + mean.shape``."""
        eps = jax.random.normal(key, sample_shape + self.mean.shape, self.mean.dtype)
        return self.mean + self.std * eps

    def mode(self) -> Array:
        """The mean."""
        return self.mean

    def fisher_vector_product(self, tangent: DiagGaussian) -> DiagGaussian:
        """``diag(1/sigma^2, 2) t`` for a tangent ``t`` in ``(mean, log_std)``."""
        return DiagGaussian(tangent.mean * jnp.exp(-2 * self.log_std), 2.0 * tangent.log_std)


def distribution_fisher_vector_product(dist: Any, tangent: Any) -> Any:
    """Per-sample Fisher of a distribution in its own parameters, applied to a tangent.

    Uses ``dist.fisher_vector_product`` when the object has one. Otherwise the Fisher is
    the Hessian of ``KL(dist || q)`` in ``q`` at ``q = dist``, taken by forward-over-reverse
    differentiation of the (small, per-sample) distribution parameters only; the object
    must then be a pytree with a ``kl_divergence`` or ``kl`` method.

    Args:
      dist: a batched distribution (a pytree).
      tangent: a tangent with the same pytree structure.

    Returns:
      ``F_dist t`` with the structure of ``dist``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from npgjax import Categorical, distribution_fisher_vector_product
      >>> d = Categorical(jnp.zeros(2))
      >>> distribution_fisher_vector_product(d, Categorical(jnp.array([1.0, 0.0]))).logits
      Array([ 0.25, -0.25], dtype=float32)
    """
    if hasattr(dist, "fisher_vector_product"):
        return dist.fisher_vector_product(tangent)
    kl = getattr(dist, "kl_divergence", None) or getattr(dist, "kl", None)
    if kl is None:
        raise TypeError(
            f"{type(dist).__name__} has neither fisher_vector_product nor kl_divergence; "
            "the analytic Fisher needs one of them."
        )
    fixed = jax.lax.stop_gradient(dist)

    def total_kl(q):
        return jnp.sum(getattr(fixed, kl.__name__)(q))

    return jax.jvp(jax.grad(total_kl), (dist,), (tangent,))[1]
