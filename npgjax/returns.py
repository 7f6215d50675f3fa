r"""Discounted returns and GAE over time-major rollouts, termination and truncation apart.

Every rollout array is **time-major**: time is the leading axis (axis 0), so arrays have
shape ``[T]`` or ``[T, *batch]`` (e.g. ``[T, num_envs]``). All functions are pure and
jittable (``gamma`` and ``lambda_`` may be traced); the recursions over time run in a
reversed :func:`jax.lax.scan`.

Episode ends come in two kinds (Pardo et al., 2018):

* ``terminated``: the MDP reached a terminal state, the value after it is zero, so the
  step never bootstraps.
* ``truncated``: the episode was cut (time limit, end of rollout); the state after it is
  not terminal, so the step bootstraps from ``next_values[t] = V(s_{t+1})``, the value of
  the *true* next observation (the pre-reset one when the environment auto-resets).

Flags (``dones``, ``terminated``, ``truncated``) may be bool or numeric; any non-zero
entry counts as ``True``. Shape problems raise an ``AssertionError`` (from ``chex``)
that names the arguments and their shapes. The estimators that use the returns
(advantage normalisation, the surrogate loss) are in :mod:`npgjax.estimators`.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

Array = jax.Array
Scalar = float | Array

__all__ = ["discounted_returns", "gae", "truncation_aware_returns"]


# ---------------------------------------------------------------- helpers

def _float_dtype(*xs: Array) -> jnp.dtype:
    """Common dtype of ``xs``, or the default float dtype when that is not a float."""
    dtype = jnp.result_type(*xs)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.result_type(float)
    return dtype


def _flag(x: Array, dtype: jnp.dtype) -> Array:
    """Bool or numeric flags -> 0/1 in ``dtype`` (non-zero means True)."""
    return (x != 0).astype(dtype)


def _check_time_major(where: str, name: str, x: Array) -> None:
    chex.assert_axis_dimension_gteq(
        x,
        axis=0,
        val=0,
        custom_message=f"{where}: {name} must be time-major with shape [T, ...]; "
        f"got shape {x.shape}",
    )


def _check_same_shape(where: str, **arrays: Array) -> None:
    desc = ", ".join(f"{k}{v.shape}" for k, v in arrays.items())
    chex.assert_equal_shape(
        list(arrays.values()),
        custom_message=f"{where}: {', '.join(arrays)} must all have the same shape; got {desc}",
    )


def _check_scalar(where: str, name: str, x: Array) -> None:
    chex.assert_rank(
        x, 0, custom_message=f"{where}: {name} must be a scalar; got shape {jnp.shape(x)}"
    )


# Reverse-scan bodies shared by the recursions below.


def _linear_step(carry: Array, x: tuple[Array, Array]) -> tuple[Array, Array]:
    """y_t = b_t + c_t * y_{t+1}."""
    b, c = x
    y = b + c * carry
    return y, y


def _truncated_step(carry: Array, x: tuple[Array, Array, Array, Array]) -> tuple[Array, Array]:
    """G_t = r_t + disc_t * (V(s_{t+1}) if done_t else G_{t+1})."""
    r, v_next, done, disc = x
    g = r + disc * jnp.where(done, v_next, carry)
    return g, g


# ---------------------------------------------------------------- returns


def discounted_returns(
    rewards: ArrayLike,
    dones: ArrayLike,
    gamma: Scalar,
    bootstrap_value: ArrayLike | None = None,
) -> Array:
    r"""Discounted reward-to-go, reset at episode ends.

    .. math::
        G_t = r_t + \gamma (1 - d_t) G_{t+1}, \qquad G_T = \text{bootstrap\_value}

    ``d_t = 1`` cuts the sum after step ``t`` (no bootstrap from the next episode). This
    treats every end as a termination; use :func:`truncation_aware_returns` when some
    ends are time-limit truncations.

    Args:
      rewards: ``[T, ...]`` rewards, time-major.
      dones: ``[T, ...]`` episode-end flags (bool or numeric), same shape as ``rewards``.
      gamma: scalar discount factor.
      bootstrap_value: value of the state after the last step, shape
        ``rewards.shape[1:]``; zeros when None.

    Returns:
      ``[T, ...]`` returns :math:`G_t`, in the float dtype of ``rewards``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from npgjax.estimators import discounted_returns
      >>> rewards = jnp.array([1.0, 1.0, 1.0, 1.0])
      >>> dones = jnp.array([False, True, False, False])
      >>> print(discounted_returns(rewards, dones, gamma=0.5))
      [1.5 1.  1.5 1. ]
      >>> print(discounted_returns(rewards, dones, 0.5, bootstrap_value=jnp.array(2.0)))
      [1.5 1.  2.  2. ]

    References:
      Sutton & Barto, `Reinforcement Learning: An Introduction
      <http://incompleteideas.net/book/the-book-2nd.html>`_, 2nd ed., 2018, Sec. 3.3.
    """
    where = "discounted_returns"
    rewards, dones, gamma = jnp.asarray(rewards), jnp.asarray(dones), jnp.asarray(gamma)
    _check_time_major(where, "rewards", rewards)
    _check_same_shape(where, rewards=rewards, dones=dones)
    _check_scalar(where, "gamma", gamma)
    dtype = _float_dtype(rewards)
    if bootstrap_value is None:
        bootstrap_value = jnp.zeros(rewards.shape[1:], dtype)
    bootstrap_value = jnp.asarray(bootstrap_value)
    chex.assert_shape(
        bootstrap_value,
        rewards.shape[1:],
        custom_message=f"{where}: bootstrap_value must have shape rewards.shape[1:] = "
        f"{rewards.shape[1:]}; got {bootstrap_value.shape}",
    )
    rewards, gamma = rewards.astype(dtype), gamma.astype(dtype)
    discounts = gamma * (1 - _flag(dones, dtype))

    _, returns = jax.lax.scan(
        _linear_step, bootstrap_value.astype(dtype), (rewards, discounts), reverse=True
    )
    return returns


def truncation_aware_returns(
    rewards: ArrayLike,
    next_values: ArrayLike,
    terminated: ArrayLike,
    truncated: ArrayLike,
    gamma: Scalar,
) -> Array:
    r"""Discounted reward-to-go that bootstraps at truncations and at the rollout end.

    With :math:`d_t = \text{terminated}_t \lor \text{truncated}_t`:

    .. math::
        G_t = r_t + \gamma (1 - \text{terminated}_t)
              \big[ d_t V(s_{t+1}) + (1 - d_t) G_{t+1} \big],
        \qquad G_T := V(s_T) = \text{next\_values}_{T-1}

    so a terminated step never bootstraps (:math:`G_t = r_t`, also when it is truncated
    too), a truncated step bootstraps from ``next_values[t]`` and does not continue into
    the next episode, and the last step of the rollout bootstraps from
    ``next_values[T-1]`` unless it is terminated.

    Args:
      rewards: ``[T, ...]`` rewards, time-major.
      next_values: ``[T, ...]`` values :math:`V(s_{t+1})` of the true next observation of
        each step (the pre-reset one when the episode ended there). Only read where a step
        is truncated but not terminated, and at ``t = T-1``.
      terminated: ``[T, ...]`` flags, the next state is terminal.
      truncated: ``[T, ...]`` flags, the episode was cut after this step.
      gamma: scalar discount factor.

    Returns:
      ``[T, ...]`` returns :math:`G_t`.

    Examples:
      >>> import jax.numpy as jnp
      >>> from npgjax.estimators import truncation_aware_returns
      >>> rewards = jnp.ones(4)
      >>> next_values = jnp.array([9.0, 10.0, 9.0, 4.0])
      >>> terminated = jnp.array([False, False, True, False])
      >>> truncated = jnp.array([False, True, False, False])
      >>> print(truncation_aware_returns(rewards, next_values, terminated, truncated, 0.5))
      [4. 6. 1. 3.]

    References:
      Pardo, Tavakoli, Levdik & Kormushev, `Time Limits in Reinforcement Learning
      <https://arxiv.org/abs/1712.00378>`_, ICML 2018.
    """
    where = "truncation_aware_returns"
    rewards, next_values = jnp.asarray(rewards), jnp.asarray(next_values)
    terminated, truncated = jnp.asarray(terminated), jnp.asarray(truncated)
    gamma = jnp.asarray(gamma)
    _check_time_major(where, "rewards", rewards)
    _check_same_shape(
        where,
        rewards=rewards,
        next_values=next_values,
        terminated=terminated,
        truncated=truncated,
    )
    _check_scalar(where, "gamma", gamma)
    dtype = _float_dtype(rewards, next_values)
    rewards, next_values, gamma = (
        rewards.astype(dtype),
        next_values.astype(dtype),
        gamma.astype(dtype),
    )
    done = _flag(terminated, dtype) + _flag(truncated, dtype) > 0
    discounts = gamma * (1 - _flag(terminated, dtype))
    # Treat the rollout end as a cut: the carry entering t = T-1 is V(s_T).
    init = next_values[-1] if rewards.shape[0] else jnp.zeros(rewards.shape[1:], dtype)

    _, returns = jax.lax.scan(
        _truncated_step, init, (rewards, next_values, done, discounts), reverse=True
    )
    return returns


# ---------------------------------------------------------------- advantages


def gae(
    rewards: ArrayLike,
    values: ArrayLike,
    next_values: ArrayLike,
    terminated: ArrayLike,
    truncated: ArrayLike,
    gamma: Scalar,
    lambda_: Scalar,
) -> tuple[Array, Array]:
    r"""Generalized advantage estimation with terminations and truncations apart.

    .. math::
        \delta_t &= r_t + \gamma (1 - \text{terminated}_t) V(s_{t+1}) - V(s_t) \\
        A_t &= \delta_t + \gamma \lambda (1 - d_t) A_{t+1}, \qquad A_T = 0

    with :math:`d_t = \text{terminated}_t \lor \text{truncated}_t`. A truncated step keeps
    its bootstrap :math:`\gamma V(s_{t+1})` in :math:`\delta_t` but does not chain into
    the next episode; the rollout end needs no flag, since ``next_values[T-1]`` already
    bootstraps it. ``lambda_ = 0`` gives the one-step TD error, ``lambda_ = 1`` the
    Monte-Carlo return minus the baseline (:func:`truncation_aware_returns` ``- values``
    when ``next_values[t] == values[t+1]`` within episodes).

    Args:
      rewards: ``[T, ...]`` rewards, time-major.
      values: ``[T, ...]`` baseline :math:`V(s_t)`.
      next_values: ``[T, ...]`` :math:`V(s_{t+1})` of the true next observation of each
        step (the pre-reset one when the episode ended there).
      terminated: ``[T, ...]`` flags, the next state is terminal.
      truncated: ``[T, ...]`` flags, the episode was cut after this step.
      gamma: scalar discount factor.
      lambda_: scalar GAE parameter in ``[0, 1]``.

    Returns:
      ``(advantages, targets)``, both ``[T, ...]``, with ``targets = advantages + values``
      (the :math:`\mathrm{TD}(\lambda)` value-function targets).

    Examples:
      >>> import jax.numpy as jnp
      >>> from npgjax.estimators import gae
      >>> rewards = jnp.ones(3)
      >>> values = jnp.array([1.0, 1.0, 1.0])
      >>> next_values = jnp.array([1.0, 5.0, 3.0])
      >>> terminated = jnp.array([False, True, False])
      >>> truncated = jnp.zeros(3, bool)
      >>> adv, targets = gae(rewards, values, next_values, terminated, truncated, 0.5, 1.0)
      >>> print(adv)
      [0.5 0.  1.5]
      >>> print(targets)
      [1.5 1.  2.5]

    References:
      Schulman, Moritz, Levine, Jordan & Abbeel, `High-Dimensional Continuous Control
      Using Generalized Advantage Estimation <https://arxiv.org/abs/1506.02438>`_,
      ICLR 2016.
    """
    where = "gae"
    rewards, values, next_values = (
        jnp.asarray(rewards),
        jnp.asarray(values),
        jnp.asarray(next_values),
    )
    terminated, truncated = jnp.asarray(terminated), jnp.asarray(truncated)
    gamma, lambda_ = jnp.asarray(gamma), jnp.asarray(lambda_)
    _check_time_major(where, "rewards", rewards)
    _check_same_shape(
        where,
        rewards=rewards,
        values=values,
        next_values=next_values,
        terminated=terminated,
        truncated=truncated,
    )
    _check_scalar(where, "gamma", gamma)
    _check_scalar(where, "lambda_", lambda_)
    dtype = _float_dtype(rewards, values, next_values)
    rewards, values, next_values = (x.astype(dtype) for x in (rewards, values, next_values))
    gamma, lambda_ = gamma.astype(dtype), lambda_.astype(dtype)
    term = _flag(terminated, dtype)
    done = jnp.maximum(term, _flag(truncated, dtype))
    deltas = rewards + gamma * (1 - term) * next_values - values
    decays = gamma * lambda_ * (1 - done)

    init = jnp.zeros(rewards.shape[1:], dtype)
    _, advantages = jax.lax.scan(_linear_step, init, (deltas, decays), reverse=True)
    return advantages, advantages + values
