r"""Step rules: the KL trust-region scale and TRPO's backtracking line search.

The second-order expansion of the KL divergence between the policy before and after a
step ``d`` is

.. math:: \mathrm{KL}(p_\theta \,\|\, p_{\theta + d}) \approx \tfrac12 d^\top F d.

npgjax uses this 1/2 convention throughout (the seed note writes
:math:`d^\top F d \le \epsilon` without the 1/2, which is the same constraint with
:math:`\epsilon` doubled). Maximising :math:`g^\top d` subject to
:math:`\tfrac12 d^\top F d \le \epsilon` gives

.. math:: d = \sqrt{\frac{2\epsilon}{g^\top F^{-1} g}}\; F^{-1} g ,

whose predicted KL is exactly :math:`\epsilon`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from npgjax._tree import (
    check_positive,
    tree_add,
    tree_all_finite,
    tree_scale,
    tree_where,
)

Array = jax.Array
PyTree = Any

__all__ = [
    "LineSearchInfo",
    "backtracking_line_search",
    "trust_region_scale",
]


def trust_region_scale(grad_dot_natgrad: Array, max_kl: Array | float) -> Array:
    r"""Scale :math:`\sqrt{2\epsilon / g^\top F^{-1} g}` of the KL-bounded natural step.

    A zero (or non-positive, or non-finite) :math:`g^\top F^{-1} g` gives a zero scale,
    so a zero gradient gives a zero step and never NaN. A traced ``max_kl`` that is not
    finite and positive (NaN, inf, 0, negative) also gives a zero scale; a concrete one
    raises ``ValueError``.

    Args:
      grad_dot_natgrad: :math:`g^\top F^{-1} g`, a scalar.
      max_kl: the KL bound :math:`\epsilon > 0`.

    Returns:
      The scalar scale ``s`` such that ``s * F^{-1} g`` has predicted KL ``max_kl``.

    Examples:
      >>> from npgjax import trust_region_scale
      >>> round(float(trust_region_scale(2.0, 0.01)), 6)
      0.1
    """
    check_positive(max_kl, "max_kl")
    gx = jnp.asarray(grad_dot_natgrad)
    eps = jnp.asarray(max_kl, gx.dtype)
    ok = (gx > 0) & jnp.isfinite(gx) & max_kl_is_valid(eps)
    eps = jnp.where(ok, eps, 0.0)
    return jnp.where(ok, jnp.sqrt(2.0 * eps / jnp.where(ok, gx, 1.0)), 0.0)


def max_kl_is_valid(max_kl: Array | float) -> Array:
    """Traced check: ``max_kl`` finite and positive."""
    eps = jnp.asarray(max_kl)
    return jnp.isfinite(eps) & (eps > 0)


class LineSearchInfo(NamedTuple):
    """Diagnostics of :func:`backtracking_line_search`.

    Attributes:
      tries: number of candidate steps evaluated.
      accepted: whether a step was accepted (otherwise the parameters are unchanged).
      step_fraction: the accepted fraction of the full step (0 if none).
      kl: measured KL of the accepted step (0 if none).
      improvement: ``loss_old - loss_new`` of the accepted step (0 if none).
      proposed_kl: measured KL of the full proposed step (the first try).
    """

    tries: Array
    accepted: Array
    step_fraction: Array
    kl: Array
    improvement: Array
    proposed_kl: Array


def backtracking_line_search(
    loss_fn: Callable[[PyTree], Array] | None,
    kl_fn: Callable[[PyTree], Array],
    params: PyTree,
    step: PyTree,
    *,
    max_kl: Array | float,
    shrink: float = 0.8,
    max_tries: int = 10,
    loss_old: Array | None = None,
) -> tuple[PyTree, LineSearchInfo]:
    r"""TRPO's backtracking line search on a proposed step.

    Tries :math:`\theta + c^k d` for :math:`k = 0, 1, \dots` with :math:`c` = ``shrink``
    and accepts the first candidate whose measured KL is at most ``max_kl`` and whose
    loss is lower than at :math:`\theta` (all finite). If every try fails, it returns
    the old parameters unchanged, also when ``step`` has a NaN (never ``0 * NaN``) or
    is zero.
    With ``loss_fn=None`` only the KL is tested (a KL guard). A traced ``max_kl`` that
    is not finite and positive accepts nothing.

    Args:
      loss_fn: ``loss_fn(params) -> scalar`` to be minimised (e.g. the surrogate
        loss), or None for a KL-only search.
      kl_fn: ``kl_fn(new_params) -> scalar``, the measured KL from the old policy.
      params: the current parameters.
      step: the proposed full step (added to ``params``).
      max_kl: the KL bound.
      shrink: factor in ``(0, 1)`` applied after each failed try.
      max_tries: maximum number of candidates (static, >= 1).
      loss_old: optional ``loss_fn(params)``, to save one evaluation.

    Returns:
      ``(new_params, LineSearchInfo)``.

    Raises:
      ValueError: for a concrete bad ``max_kl``, ``shrink`` or ``max_tries``, or when
        ``loss_fn`` or ``kl_fn`` does not return a scalar.

    Examples:
      >>> import jax.numpy as jnp
      >>> from npgjax import backtracking_line_search
      >>> p, info = backtracking_line_search(
      ...     lambda p: jnp.sum((p - 1.0) ** 2), lambda q: 0.5 * jnp.sum(q**2),
      ...     jnp.zeros(1), jnp.ones(1), max_kl=0.1, shrink=0.5)
      >>> p, int(info.tries)
      (Array([0.25], dtype=float32), 3)
    """
    check_positive(max_kl, "max_kl")
    if not 0.0 < float(shrink) < 1.0:
        raise ValueError(f"shrink must be in (0, 1), got {shrink}.")
    if int(max_tries) < 1:
        raise ValueError(f"max_tries must be at least 1, got {max_tries}.")
    _check_scalar(kl_fn, params, "kl_fn")
    if loss_fn is None:
        f0 = jnp.zeros((), jnp.result_type(*jax.tree.leaves(params), jnp.float32))
    else:
        _check_scalar(loss_fn, params, "loss_fn")
        f0 = loss_fn(params) if loss_old is None else jnp.asarray(loss_old)
    dtype = jnp.result_type(f0)
    zero = jnp.zeros((), dtype)
    valid = max_kl_is_valid(max_kl) & jnp.isfinite(f0) & tree_all_finite(step)
    if loss_fn is not None:  # a zero step cannot improve (rounding could make it look so)
        valid = valid & jax.tree.reduce(
            jnp.logical_or, [jnp.any(x != 0) for x in jax.tree.leaves(step)], jnp.asarray(False)
        )

    def evaluate(frac):
        cand = tree_add(params, tree_scale(frac, step))
        kl = kl_fn(cand)
        improvement = zero if loss_fn is None else f0 - loss_fn(cand)
        ok = (kl <= max_kl) & jnp.isfinite(kl) & jnp.isfinite(improvement)
        if loss_fn is not None:
            ok = ok & (improvement > 0)
        return ok & valid & tree_all_finite(cand), kl.astype(dtype), improvement.astype(dtype)

    def cond(state):
        k, accepted, *_ = state
        return (k < max_tries) & ~accepted

    def body(state):
        k, _, _, _, _, first_kl = state
        frac = jnp.asarray(shrink, dtype) ** k
        ok, kl, imp = evaluate(frac)
        first_kl = jnp.where(k == 0, kl, first_kl)
        return (k + 1, ok, jnp.where(ok, frac, zero), jnp.where(ok, kl, zero),
                jnp.where(ok, imp, zero), first_kl)

    init = (jnp.zeros((), jnp.int32), jnp.asarray(False), zero, zero, zero, zero)
    tries, accepted, frac, kl, imp, first_kl = jax.lax.while_loop(cond, body, init)
    # Never params + 0 * NaN: a rejected step keeps the old parameters exactly.
    new_params = tree_where(accepted, tree_add(params, tree_scale(frac, step)), params)
    return new_params, LineSearchInfo(tries, accepted, frac, kl, imp, first_kl)


def _check_scalar(fn: Callable[[PyTree], Array], params: PyTree, name: str) -> None:
    shape = jax.eval_shape(fn, params).shape
    if shape != ():
        raise ValueError(
            f"backtracking_line_search: {name} must return a scalar (e.g. a mean over the "
            f"batch); got shape {shape}."
        )
