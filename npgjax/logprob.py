r"""Trajectory log-probabilities.

A policy :math:`\pi_\theta` and dynamics :math:`p(s_{t+1} | s_t, a_t)` induce

.. math::
    \log p_\theta(\tau) = \log p(s_0) + \sum_t \log \pi_\theta(a_t | s_t)
                          + \sum_t \log p(s_{t+1} | s_t, a_t).

Only the middle sum depends on :math:`\theta`, so its gradient (the score), the Fisher
matrix and every natural gradient are the same whether or not the other terms are
included. They are unknown for most environments, so this module leaves them out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp

Array = jax.Array
PyTree = Any

__all__ = ["policy_log_prob_fn", "segment_log_probs", "trajectory_log_prob"]


def trajectory_log_prob(step_log_probs: Array, mask: Array | None = None) -> Array:
    r"""Masked sum over time of per-step log-probabilities, one value per trajectory.

    .. math::
        \log p_\theta(\tau_i) = \sum_t m_{it} \log \pi_\theta(a_{it} | s_{it}) + \text{const}

    The dynamics terms are constant in :math:`\theta` and are left out (see the module
    docstring). Padding steps of shorter episodes get ``mask == 0``.

    Args:
      step_log_probs: ``[N, T]`` log pi(a_t|s_t), trajectories along axis 0.
      mask: optional ``[N, T]`` validity mask (bool or float).

    Returns:
      ``[N]`` trajectory log-probabilities.

    Examples:
      >>> import jax.numpy as jnp
      >>> from npgjax import trajectory_log_prob
      >>> lp = jnp.array([[-1.0, -2.0, -3.0], [-0.5, -0.5, -9.0]])
      >>> trajectory_log_prob(lp, jnp.array([[1, 1, 1], [1, 1, 0]]))
      Array([-6., -1.], dtype=float32)
    """
    chex.assert_rank(step_log_probs, 2)
    if mask is None:
        return jnp.sum(step_log_probs, axis=1)
    chex.assert_equal_shape([step_log_probs, mask])
    return jnp.sum(jnp.where(mask.astype(bool), step_log_probs, 0.0), axis=1)


def segment_log_probs(step_log_probs: Array, dones: Array) -> tuple[Array, Array]:
    r"""Split time-major rollouts with auto-resets into episodes and sum each one.

    In a rollout of ``T`` steps from ``E`` environments that reset themselves, column
    ``e`` holds up to ``T`` episode segments; ``dones[t, e]`` marks step ``t`` as the last
    one of its episode. Segment ``k`` of column ``e`` gets slot ``e * T + k``, so the
    output has a static size ``E * T`` (jit-friendly) and a mask of the slots in use.
    The last segment of a column may be cut by the end of the rollout; it is kept.

    Args:
      step_log_probs: ``[T, E]`` per-step log-probabilities.
      dones: ``[T, E]`` episode-end flags (terminated or truncated).

    Returns:
      ``(log_probs, mask)``, both ``[E * T]``: per-segment sums and the valid slots.

    Examples:
      >>> import jax.numpy as jnp
      >>> from npgjax import segment_log_probs
      >>> lp = jnp.array([[-1.0], [-2.0], [-3.0]])
      >>> seg, m = segment_log_probs(lp, jnp.array([[False], [True], [False]]))
      >>> seg, m
      (Array([-3., -3.,  0.], dtype=float32), Array([ True,  True, False], dtype=bool))
    """
    chex.assert_rank(step_log_probs, 2)
    chex.assert_equal_shape([step_log_probs, dones])
    T, E = step_log_probs.shape
    d = dones.astype(jnp.int32)
    # Segment index within a column: number of episode ends strictly before t.
    k = jnp.cumsum(d, axis=0) - d
    ids = (jnp.arange(E)[None, :] * T + k).reshape(-1)
    seg = jax.ops.segment_sum(step_log_probs.reshape(-1), ids, num_segments=E * T)
    used = jax.ops.segment_sum(jnp.ones(T * E, jnp.int32), ids, num_segments=E * T) > 0
    return seg, used


def policy_log_prob_fn(
    policy_fn: Callable[[PyTree, Array], Any],
    *,
    per: str = "step",
    obs_key: str = "obs",
    action_key: str = "actions",
    mask_key: str = "mask",
) -> Callable[[PyTree, PyTree], Array]:
    r"""Build a ``log_prob_fn(params, batch) -> [N]`` from a policy.

    One call chooses what a sample is, and so which Fisher the result gives:

    * ``per="step"``: a sample is a state-action pair, ``batch[obs_key]`` is
      ``[N, ...]`` and the Fisher is the per-step average TRPO uses;
    * ``per="trajectory"``: a sample is a trajectory, ``batch[obs_key]`` is
      ``[N, T, ...]``, ``batch[mask_key]`` (optional) is ``[N, T]``, and the log-prob is
      the masked sum over time (:func:`trajectory_log_prob`), the seed's
      :math:`F = E[\nabla \log p_\theta(\tau) \nabla \log p_\theta(\tau)^\top]`.

    In expectation the trajectory Fisher is the sum over time of the per-step Fishers
    (cross terms of different steps vanish since each score has zero conditional mean).

    Args:
      policy_fn: ``policy_fn(params, obs) -> distribution`` with a ``log_prob`` method,
        batched over the leading axes of ``obs``.
      per: ``"step"`` or ``"trajectory"``.
      obs_key: key of the observations in ``batch``.
      action_key: key of the actions in ``batch``.
      mask_key: key of the optional ``[N, T]`` mask (trajectory mode).

    Returns:
      ``log_prob_fn(params, batch) -> [N]``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from npgjax import Categorical, policy_log_prob_fn
      >>> fn = policy_log_prob_fn(lambda p, o: Categorical(o @ p), per="trajectory")
      >>> batch = {"obs": jnp.ones((2, 3, 4)), "actions": jnp.zeros((2, 3), int)}
      >>> fn(jnp.zeros((4, 2)), batch).shape
      (2,)
    """
    if per not in ("step", "trajectory"):
        raise ValueError(f"per must be 'step' or 'trajectory', got {per!r}.")

    def log_prob_fn(params: PyTree, batch: PyTree) -> Array:
        obs, actions = batch[obs_key], batch[action_key]
        step_lp = policy_fn(params, obs).log_prob(actions)
        if per == "step":
            if step_lp.ndim != 1:
                raise ValueError(
                    f"per='step' expects observations of shape [N, ...] and gives [N] "
                    f"log-probs; got log-probs of shape {step_lp.shape}."
                )
            return step_lp
        if step_lp.ndim != 2:
            raise ValueError(
                "per='trajectory' expects observations of shape [N, T, ...]; got per-step "
                f"log-probs of shape {step_lp.shape}."
            )
        mask = batch.get(mask_key) if isinstance(batch, dict) else None
        return trajectory_log_prob(step_lp, mask)

    return log_prob_fn
