r"""Status flags of the transforms' states, and one named readout of their diagnostics.

Under ``jit`` nothing can raise, so every npgjax transform reports what went wrong in
an ``int32`` bit field ``status`` of its state. The low bits say why an update was
zero (``skipped`` or ``accepted == False``); the high bits are notes about an update
that was made. Outside ``jit`` most of the same problems raise ``ValueError`` first.

Read a status with :func:`describe_status` (outside ``jit``), or test a bit under
``jit`` with ``state.status & Status.NONFINITE_GRADIENT``. :func:`diagnostics` collects
every npgjax state of any optax chain into one flat dict.
"""

from __future__ import annotations

import enum
from typing import Any

import jax
import numpy as np

Array = jax.Array

__all__ = ["Status", "describe_status", "diagnostics"]


class Status(enum.IntFlag):
    r"""Bits of the ``status`` field of npgjax's transform states.

    Reasons for a zero update (``skipped=True``, or a line search that accepted nothing):

    * ``NONFINITE_GRADIENT``: the gradient has a NaN or inf (e.g. NaN rewards, or NaN
      log-probabilities from invalid actions).
    * ``NONFINITE_FISHER``: the Fisher product or the solve is not finite (e.g. a NaN
      observation, or invalid actions in the empirical Fisher's batch).
    * ``BAD_MAX_KL``: ``max_kl`` is NaN, infinite or not positive.
    * ``BAD_DAMPING``: ``damping`` is NaN, infinite or negative.
    * ``BAD_MASK``: ``fisher_mask`` has a NaN, infinite or negative weight.
    * ``SINGULAR_FISHER``: :math:`g^\top (F + \lambda I) g \le 0` for a non-zero gradient
      (no curvature along it, e.g. every sample masked out and no damping).
    * ``NONFINITE_STEP``: the proposed step given to a line search or guard is not finite.
    * ``NONFINITE_LOSS``: the line search's loss at the current parameters is not finite.
    * ``NO_ACCEPTABLE_STEP``: no try of the line search or KL guard passed.

    Notes on an update that was made:

    * ``GRADIENT_FALLBACK``: the solver gave :math:`g^\top x \le 0` (or a non-finite
      ``x``) for a non-zero gradient, so the step follows the gradient instead,
      :math:`x = (g^\top g / g^\top (F + \lambda I) g)\, g` (CG's first iterate).
    * ``CG_INACCURATE``: the real product :math:`x^\top (F+\lambda I) x` exceeded
      :math:`g^\top x` by more than 10% (they are equal in exact arithmetic); the step
      was scaled with the real product, the smaller step.
    * ``KL_GUARD_SHRUNK``: the KL guard shrank the step.
    * ``DAMPING_DOMINATED``: the undamped Fisher accounts for under 1% of the step's
      model KL (``predicted_kl`` far below ``max_kl``): the step moves along directions
      the Fisher barely sees (fewer samples than parameters, or float32 rounding on an
      ill-conditioned Fisher), so its real KL is unchecked. Use the KL guard, TRPO,
      more samples or float64.
    """

    OK = 0
    NONFINITE_GRADIENT = 1 << 0
    NONFINITE_FISHER = 1 << 1
    BAD_MAX_KL = 1 << 2
    BAD_DAMPING = 1 << 3
    BAD_MASK = 1 << 4
    SINGULAR_FISHER = 1 << 5
    NONFINITE_STEP = 1 << 6
    NONFINITE_LOSS = 1 << 7
    NO_ACCEPTABLE_STEP = 1 << 8
    GRADIENT_FALLBACK = 1 << 10
    CG_INACCURATE = 1 << 11
    KL_GUARD_SHRUNK = 1 << 12
    DAMPING_DOMINATED = 1 << 13


#: Bits that come with a zero update.
ZERO_UPDATE_BITS = (1 << 10) - 1


def describe_status(status: Any) -> list[str]:
    """Names of the bits set in a (concrete, scalar) status.

    Args:
      status: an ``int`` or a concrete scalar array, e.g. ``opt_state[0].status``.

    Returns:
      The names of the set bits, ``[]`` for 0.

    Examples:
      >>> from npgjax import Status, describe_status
      >>> describe_status(Status.BAD_MAX_KL | Status.NONFINITE_GRADIENT)
      ['NONFINITE_GRADIENT', 'BAD_MAX_KL']
    """
    code = int(np.asarray(status))
    return [s.name for s in Status if s.value and code & s.value]


_PREFIXES = {
    "PreconditionByFisherState": "",
    "TrustRegionLineSearchState": "ls_",
    "KLGuardState": "guard_",
}


def diagnostics(opt_state: Any) -> dict[str, Array]:
    """Every npgjax diagnostic in an optimizer state, by name.

    Finds the states of :func:`npgjax.precondition_by_fisher` (fields as named),
    :func:`npgjax.trust_region_line_search` (prefixed ``ls_``) and
    :func:`npgjax.kl_guard` (prefixed ``guard_``) anywhere in ``opt_state``: a chain,
    ``optax.inject_hyperparams``, ``npg``, ``trpo`` or nested combinations. A second
    state of the same kind gets a suffix ``_1``, ``_2``, .... Works under ``jit`` and
    ``vmap`` (the values keep their batch axes).

    Args:
      opt_state: any optax state.

    Returns:
      A flat ``dict`` from names to arrays, e.g. ``predicted_kl``, ``skipped``,
      ``status``, ``ls_accepted``, ``ls_proposed_kl``, ``guard_kl``.

    Examples:
      >>> import jax, jax.numpy as jnp, npgjax
      >>> dist_fn = lambda w, b: npgjax.Categorical(b["obs"] @ w)
      >>> loss_fn = lambda w, b: -dist_fn(w, b).log_prob(b["act"]).mean()
      >>> batch = {"obs": jnp.eye(3), "act": jnp.array([0, 1, 2])}
      >>> tx = npgjax.trpo(dist_fn, loss_fn, max_kl=0.01)
      >>> w = jnp.zeros((3, 3))
      >>> _, state = tx.update(jax.grad(loss_fn)(w, batch), tx.init(w), w, batch=batch)
      >>> d = npgjax.diagnostics(state)
      >>> bool(d["ls_accepted"]), int(d["status"]), float(d["ls_kl"]) <= 0.01
      (True, 0, True)
    """

    def is_ours(x: Any) -> bool:
        return type(x).__name__ in _PREFIXES and hasattr(x, "_fields")

    out: dict[str, Array] = {}
    seen: dict[str, int] = {}
    for st in jax.tree_util.tree_leaves(opt_state, is_leaf=is_ours):
        if not is_ours(st):
            continue
        kind = type(st).__name__
        n = seen.get(kind, 0)
        seen[kind] = n + 1
        suffix = f"_{n}" if n else ""
        for field in st._fields:
            out[f"{_PREFIXES[kind]}{field}{suffix}"] = getattr(st, field)
    return out
