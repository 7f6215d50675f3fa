r"""Advantage normalisation, the surrogate loss and explained variance.

The return and advantage recursions (:func:`discounted_returns`,
:func:`truncation_aware_returns`, :func:`gae`) live in :mod:`npgjax.returns` and are
re-exported here. Arrays are time-major where time matters (``[T, ...]``). Masks may be
bool or float; they act as non-negative sample weights (0/1 for a plain mask) and
masked-out entries may hold any finite or non-finite value. Shape problems raise an
``AssertionError`` (from ``chex``) that names the arguments and their shapes.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from npgjax.returns import (
    _check_same_shape,
    _float_dtype,
    discounted_returns,
    gae,
    truncation_aware_returns,
)

Array = jax.Array
Scalar = float | Array

__all__ = [
    "discounted_returns",
    "explained_variance",
    "gae",
    "normalize_advantages",
    "surrogate_loss",
    "truncation_aware_returns",
]


def _weights(where: str, mask: ArrayLike | None, like: Array) -> Array:
    """Mask -> float weights shaped like ``like`` (all ones when ``mask`` is None)."""
    if mask is None:
        return jnp.ones(like.shape, like.dtype)
    mask = jnp.asarray(mask)
    chex.assert_shape(
        mask,
        like.shape,
        custom_message=f"{where}: mask has shape {mask.shape} but the data have shape {like.shape}",
    )
    return mask.astype(like.dtype)


def _weighted_moments(x: Array, w: Array) -> tuple[Array, Array, Array]:
    """Weighted ``(x - mean, variance, total weight)`` over entries with ``w > 0``.

    Two-pass over data shifted by one valid entry, so exactly constant data give exactly
    zero deviations and variance (a plain two-pass in float32 does not).
    """
    valid = w > 0
    n = jnp.sum(jnp.where(valid, w, 0))
    safe_n = jnp.where(n > 0, n, 1)
    shift = x.ravel()[jnp.argmax(valid.ravel())] if x.size else jnp.zeros((), x.dtype)
    d = jnp.where(valid, x - shift, 0)
    centred = d - jnp.sum(w * d) / safe_n
    var = jnp.sum(jnp.where(valid, w * centred**2, 0)) / safe_n
    return centred, var, n


def normalize_advantages(
    advantages: ArrayLike,
    mask: ArrayLike | None = None,
    eps: float = 1e-8,
) -> Array:
    r"""Standardise advantages over the valid entries.

    .. math::
        \hat A_i = \frac{A_i - \mu}{\sigma + \epsilon}, \qquad
        \mu = \frac{\sum_i m_i A_i}{\sum_i m_i}, \quad
        \sigma^2 = \frac{\sum_i m_i (A_i - \mu)^2}{\sum_i m_i}

    over all axes at once (population standard deviation). Masked-out entries
    (:math:`m_i = 0`) are returned as 0; with no valid entry the result is all zeros.
    Exactly constant advantages map to exactly 0.

    Args:
      advantages: array of any shape.
      mask: optional weights of the same shape (bool or 0/1 float).
      eps: added to the standard deviation.

    Returns:
      Normalised advantages, same shape and float dtype as ``advantages``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from npgjax.estimators import normalize_advantages
      >>> adv = jnp.array([1.0, 3.0, 100.0])
      >>> print(normalize_advantages(adv, mask=jnp.array([True, True, False])))
      [-1.  1.  0.]
    """
    where = "normalize_advantages"
    advantages = jnp.asarray(advantages)
    advantages = advantages.astype(_float_dtype(advantages))
    w = _weights(where, mask, advantages)
    centred, var, _ = _weighted_moments(advantages, w)
    normalised = centred / (jnp.sqrt(var) + eps)
    return jnp.where(w > 0, normalised, 0).astype(advantages.dtype)


# ---------------------------------------------------------------- losses and diagnostics


def surrogate_loss(
    log_probs: ArrayLike,
    old_log_probs: ArrayLike,
    advantages: ArrayLike,
    mask: ArrayLike | None = None,
) -> Array:
    r"""Likelihood-ratio surrogate loss (to minimise) of a policy-gradient step.

    .. math::
        L(\theta) = -\frac{\sum_i m_i \, \rho_i(\theta) \, A_i}{\sum_i m_i}, \qquad
        \rho_i(\theta) = \exp\big(\log \pi_\theta(a_i|s_i) - \log \pi_{\text{old}}(a_i|s_i)\big)

    ``old_log_probs`` and ``advantages`` are constants (``stop_gradient``). At
    :math:`\theta = \theta_\text{old}` the gradient is the policy-gradient (REINFORCE)
    estimate :math:`-\frac{1}{\sum m}\sum_i m_i A_i \nabla_\theta \log \pi_\theta(a_i|s_i)`
    (with sign flipped, since this is a loss). Returns 0 when no entry is valid.

    Args:
      log_probs: ``log pi_theta(a|s)`` of the taken actions, any shape.
      old_log_probs: log-probabilities under the behaviour policy, same shape.
      advantages: advantage estimates, same shape.
      mask: optional weights of the same shape (bool or 0/1 float); plain mean if None.

    Returns:
      Scalar loss.

    Examples:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> from npgjax.estimators import surrogate_loss
      >>> logp = jnp.log(jnp.array([0.5, 0.25]))
      >>> adv = jnp.array([1.0, -2.0])
      >>> print(surrogate_loss(logp, logp, adv))
      0.5
      >>> print(jax.grad(surrogate_loss)(logp, logp, adv))  # -A_i / N
      [-0.5  1. ]

    References:
      Williams, `Simple statistical gradient-following algorithms for connectionist
      reinforcement learning <https://doi.org/10.1007/BF00992696>`_, 1992.
      Schulman, Levine, Moritz, Jordan & Abbeel, `Trust Region Policy Optimization
      <https://arxiv.org/abs/1502.05477>`_, ICML 2015.
    """
    where = "surrogate_loss"
    log_probs, old_log_probs, advantages = (
        jnp.asarray(log_probs),
        jnp.asarray(old_log_probs),
        jnp.asarray(advantages),
    )
    _check_same_shape(
        where, log_probs=log_probs, old_log_probs=old_log_probs, advantages=advantages
    )
    old_log_probs = jax.lax.stop_gradient(old_log_probs)
    advantages = jax.lax.stop_gradient(advantages)
    w = _weights(where, mask, log_probs.astype(_float_dtype(log_probs)))
    valid = w > 0
    # Zero masked-out entries before exp so that padding cannot produce NaN gradients.
    log_ratio = jnp.where(valid, log_probs - old_log_probs, 0)
    terms = jnp.where(valid, w * jnp.exp(log_ratio) * advantages, 0)
    n = jnp.sum(w)
    return -jnp.sum(terms) / jnp.where(n > 0, n, 1)


def explained_variance(
    predictions: ArrayLike,
    targets: ArrayLike,
    mask: ArrayLike | None = None,
) -> Array:
    r"""Fraction of the variance of ``targets`` explained by ``predictions``.

    .. math::
        \mathrm{EV} = 1 - \frac{\mathrm{Var}[y - \hat y]}{\mathrm{Var}[y]}

    with (mask-weighted) population variances over all axes. 1 is a perfect fit, 0 is
    no better than predicting the mean, negative is worse. When :math:`\mathrm{Var}[y]`
    is exactly 0 (constant targets, or no valid entry) it returns **0.0**, not NaN.

    Args:
      predictions: predicted values, e.g. ``values``, any shape.
      targets: regression targets, e.g. returns, same shape.
      mask: optional weights of the same shape (bool or 0/1 float).

    Returns:
      Scalar explained variance.

    Examples:
      >>> import jax.numpy as jnp
      >>> from npgjax.estimators import explained_variance
      >>> targets = jnp.array([1.0, 2.0, 3.0, 4.0])
      >>> print(explained_variance(targets, targets))
      1.0
      >>> print(explained_variance(jnp.full(4, 2.5), targets))
      0.0
      >>> print(explained_variance(jnp.array([1.0, 2.0, 3.0, 5.0]), targets))
      0.85
    """
    where = "explained_variance"
    predictions, targets = jnp.asarray(predictions), jnp.asarray(targets)
    _check_same_shape(where, predictions=predictions, targets=targets)
    dtype = _float_dtype(predictions, targets)
    predictions, targets = predictions.astype(dtype), targets.astype(dtype)
    w = _weights(where, mask, targets)
    _, var_y, _ = _weighted_moments(targets, w)
    _, var_res, _ = _weighted_moments(targets - predictions, w)
    ok = var_y > 0
    return jnp.where(ok, 1 - var_res / jnp.where(ok, var_y, 1), 0).astype(dtype)
