r"""Recurrent policies and critics: unrolls over ``[T, E]`` rollouts, the batch check, the fit.

A recurrent network's output at step ``t`` depends on the whole episode so far through
its hidden state :math:`h_t`. The rollout stores the hidden state fed to the network at
every step (``carry``) and the episode-end flags (``done``); the update replays the
rollout from the hidden states at its start, ``carry[0]``, resetting to zeros after
every ``done``:

.. math:: h'_t, y_t = \mathrm{net}_\theta(h_t, o_t), \qquad
          h_{t+1} = (1 - d_t)\, h'_t .

So the log-probabilities, the KL and their derivatives flow through the recurrence,
and jvp/vjp through this ``lax.scan`` give the trajectory Fisher's products.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from npgjax.rl.critic import permutations

Array = jax.Array
PyTree = Any

__all__ = ["check_time_batch", "fit_recurrent_critic", "reset_where", "unroll",
           "unroll_values"]


def reset_where(done: Array, carry: PyTree) -> PyTree:
    """``carry`` with the rows of finished episodes (``done [E]``) set to zeros."""
    return jax.tree.map(
        lambda h: jnp.where(done.reshape(done.shape + (1,) * (h.ndim - done.ndim)), 0, h),
        carry)


def unroll(net: Any, params: PyTree, carry: Array, obs: Array, done: Array
           ) -> tuple[Array, Array]:
    """Replay ``net`` over a time-major rollout.

    Args:
      net: a :class:`~npgjax.rl.GRUNet` (any ``(carry, obs) -> (carry, out)`` module).
      params: its parameters.
      carry: ``[E, H]`` hidden states at the first step.
      obs: ``[T, E, ...]`` observations.
      done: ``[T, E]`` episode-end flags (the hidden state is reset after them).

    Returns:
      ``(outputs [T, E, out], carry after the last step [E, H])``.
    """

    def step(h, xs):
        o, d = xs
        h, y = net.apply(params, h, o)
        return reset_where(d, h), y

    carry, out = jax.lax.scan(step, carry, (obs, done))
    return out, carry


def unroll_values(net: Any, params: PyTree, carry: Array, obs: Array, next_obs: Array,
                  done: Array) -> tuple[Array, Array, Array]:
    """A recurrent critic's values of ``obs`` and of the true next observations.

    ``next_obs[t]`` is valued from the hidden state after step ``t`` before any reset
    (bootstrapping at truncations and at the end of the rollout).

    Returns:
      ``(values [T, E], next_values [T, E], carry after the last step [E, H])``.
    """

    def step(h, xs):
        o, no, d = xs
        h, v = net.apply(params, h, o)
        _, nv = net.apply(params, h, no)
        return reset_where(d, h), (v[..., 0], nv[..., 0])

    carry, (v, nv) = jax.lax.scan(step, carry, (obs, next_obs, done))
    return v, nv, carry


def check_time_batch(batch: dict[str, Array], num_steps: int, num_envs: int) -> None:
    """Raise ValueError unless ``batch`` is a flat time-major rollout a recurrent net can replay.

    It needs ``obs``, ``carry`` (hidden state fed at each step) and ``done``, each with
    leading axis ``num_steps * num_envs``.
    """
    missing = [k for k in ("obs", "carry", "done") if k not in batch]
    if missing:
        raise ValueError(f"a recurrent policy replays whole rollouts: the batch needs keys "
                         f"'obs', 'carry' and 'done' (missing {missing}).")
    n = num_steps * num_envs
    for k in ("obs", "carry", "done"):
        shape = jnp.shape(batch[k])
        if not shape or shape[0] != n:
            raise ValueError(
                f"a recurrent policy needs a batch with a time axis: {k!r} must have leading "
                f"axis num_steps * num_envs = {num_steps} * {num_envs} = {n} (time-major), "
                f"got shape {shape}.")


def fit_recurrent_critic(
    net: Any,
    tx: optax.GradientTransformation,
    params: PyTree,
    opt_state: PyTree,
    inputs: tuple[Array, Array, Array],
    targets: Array,
    key: Array,
    *,
    epochs: int,
    minibatch_envs: int,
) -> tuple[PyTree, PyTree]:
    """``epochs`` passes of adam on the squared error, in minibatches of whole environments.

    Args:
      net: the recurrent critic.
      tx: its optimiser.
      params: its parameters.
      opt_state: the optimiser's state.
      inputs: ``(carry [E, H], obs [T, E, ...], done [T, E])``.
      targets: ``[T, E]`` value targets.
      key: shuffling key.
      epochs: passes over the environments.
      minibatch_envs: environments per minibatch (must divide ``E``).

    Returns:
      The new ``(params, opt_state)``.
    """
    h0, obs, done = inputs
    E = h0.shape[0]
    n_mb = E // minibatch_envs

    def loss(p, h, o, d, t):
        v = unroll(net, p, h, o, d)[0][..., 0]
        return jnp.mean((v - t) ** 2)

    def split(x, perm, axis):  # [.., E, ..] -> [n_mb, .., mb, ..]
        x = jnp.take(x, perm, axis=axis)
        x = x.reshape(x.shape[:axis] + (n_mb, minibatch_envs) + x.shape[axis + 1:])
        return jnp.moveaxis(x, axis, 0)

    def epoch(carry, perm):
        xs = (split(h0, perm, 0), split(obs, perm, 1), split(done, perm, 1),
              split(targets, perm, 1))

        def mb_step(c, x):
            p, s = c
            g = jax.grad(loss)(p, *x)
            u, s = tx.update(g, s, p)
            return (optax.apply_updates(p, u), s), None

        return jax.lax.scan(mb_step, carry, xs)[0], None

    return jax.lax.scan(epoch, (params, opt_state), permutations(key, epochs, E))[0]
