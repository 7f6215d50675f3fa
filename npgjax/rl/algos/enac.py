r"""Episodic natural actor-critic (Peters & Schaal, 2008) on auto-reset rollouts.

eNAC regresses episode returns on the compatible features, the trajectory scores
:math:`\psi_k = \nabla_\theta \log p_\theta(\tau_k)`, with a baseline term:

.. math:: \min_{w, b} \sum_k m_k (\psi_k^\top w + b - R_k)^2 .

Eliminating ``b`` leaves the normal equations :math:`\mathrm{Cov}(\psi)\, w =
\mathrm{Cov}(\psi, R)`, i.e. the centred empirical trajectory Fisher times ``w`` equals
the gradient of :math:`\sum_k m_k (R_k - \bar R) \log p_\theta(\tau_k) / \sum_k m_k`.
So ``w`` is the natural gradient, and the core's ``precondition_by_fisher`` with
``centered=True`` over segment log-probs computes it without materialising ``psi``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from npgjax.estimators import truncation_aware_returns
from npgjax.logprob import segment_log_probs

__all__ = ["enac_objective", "segment_returns"]


def segment_returns(
    rewards: jax.Array,
    next_values: jax.Array,
    terminated: jax.Array,
    truncated: jax.Array,
    gamma: float | jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """Discounted return of each episode segment of a ``[T, E]`` rollout, from its start.

    Segments are laid out as in :func:`npgjax.segment_log_probs`. A segment cut by the end
    of the rollout or by truncation is bootstrapped with ``next_values``.

    Args:
      rewards: ``[T, E]`` rewards.
      next_values: ``[T, E]`` values of the true next observations.
      terminated: ``[T, E]`` termination flags.
      truncated: ``[T, E]`` truncation flags.
      gamma: discount.

    Returns:
      ``(returns, mask)``, both ``[E * T]``.
    """
    G = truncation_aware_returns(rewards, next_values, terminated, truncated, gamma)
    done = terminated | truncated
    start = jnp.concatenate([jnp.ones((1,) + done.shape[1:], bool), done[:-1]], axis=0)
    return segment_log_probs(jnp.where(start, G, 0.0), done)


def enac_objective(
    seg_log_probs: jax.Array, seg_returns: jax.Array, seg_mask: jax.Array
) -> jax.Array:
    r"""The loss whose gradient is :math:`-\mathrm{Cov}(\psi, R)` (minimise it).

    .. math:: L(\theta) = -\sum_k w_k (R_k - \bar R) \log p_\theta(\tau_k)

    Args:
      seg_log_probs: ``[K]`` segment log-probabilities (differentiable).
      seg_returns: ``[K]`` segment returns (treated as constants).
      seg_mask: ``[K]`` valid segments.

    Returns:
      A scalar loss.
    """
    m = seg_mask.astype(seg_log_probs.dtype)
    w = m / jnp.maximum(jnp.sum(m), 1.0)
    centred = jax.lax.stop_gradient((seg_returns - jnp.sum(w * seg_returns)) * w)
    return -jnp.sum(centred * seg_log_probs)
