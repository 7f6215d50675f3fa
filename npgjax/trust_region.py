r"""Transforms that measure the KL of a proposed step: TRPO's line search and a KL guard.

Both go last in a chain, after the step has its final sign and size, and call the
policy at the candidate parameters ``params + c^k d``. A proposed step with a NaN, or a
``max_kl`` that is not finite and positive, gives a zero update and a flag in
``status`` (see :class:`npgjax.Status`); nothing non-finite reaches the parameters.

Inside ``jax.shard_map`` or ``jax.pmap`` with the batch split over ``axis_name``, the
loss and the KL of each candidate are averaged over the devices (``pmean``), so every
device takes the same decision, the one a single device takes on the whole batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from npgjax._tree import (
    AxisName,
    axis_pmean,
    axis_psum,
    check_axis_name,
    check_positive,
    check_same_structure,
    check_state,
    tree_all_finite,
    tree_norm,
    tree_scale,
    tree_where,
    tree_zeros_like,
)
from npgjax.status import Status
from npgjax.steps import backtracking_line_search, max_kl_is_valid

Array = jax.Array
PyTree = Any

__all__ = [
    "KLGuardState",
    "TrustRegionLineSearchState",
    "kl_guard",
    "mean_kl",
    "trust_region_line_search",
]


class TrustRegionLineSearchState(NamedTuple):
    """Diagnostics of the last :func:`trust_region_line_search` update.

    Attributes:
      tries: candidates evaluated.
      accepted: whether a step was accepted.
      step_fraction: accepted fraction of the proposed step.
      kl: measured KL of the accepted step.
      improvement: decrease of the loss.
      proposed_norm: Euclidean norm of the proposed step, before the search.
      proposed_kl: measured KL of the full proposed step (the first try).
      status: :class:`npgjax.Status` bits (0 when a step was accepted).
    """

    tries: Array
    accepted: Array
    step_fraction: Array
    kl: Array
    improvement: Array
    proposed_norm: Array
    proposed_kl: Array
    status: Array


class KLGuardState(NamedTuple):
    """Diagnostics of the last :func:`kl_guard` update.

    Attributes:
      tries: candidates evaluated.
      accepted: whether a step within the bound was found (otherwise the update is 0).
      step_fraction: kept fraction of the proposed step.
      kl: measured KL of the returned step.
      proposed_kl: measured KL of the full proposed step.
      status: :class:`npgjax.Status` bits (``KL_GUARD_SHRUNK`` when it shrank).
    """

    tries: Array
    accepted: Array
    step_fraction: Array
    kl: Array
    proposed_kl: Array
    status: Array


def mean_kl(
    dist_fn: Callable[[PyTree, PyTree], Any], *, axis_name: AxisName = None
) -> Callable[[PyTree, PyTree, PyTree], Array]:
    """``kl_fn(new_params, old_params, batch)``: mean KL(old || new) over the batch.

    Args:
      dist_fn: ``dist_fn(params, batch) -> distribution`` with a ``kl`` method.
      axis_name: inside ``shard_map``/``pmap``, the axis the batch is split over: the
        mean is then over the global batch. Not needed for the ``kl_fn`` of
        :func:`trust_region_line_search` or :func:`kl_guard` with their own
        ``axis_name``, which average ``kl_fn`` over the devices themselves.

    Returns:
      The KL function for :func:`trust_region_line_search` and :func:`kl_guard`.

    Examples:
      >>> import jax.numpy as jnp
      >>> from npgjax import Categorical, mean_kl
      >>> kl = mean_kl(lambda w, x: Categorical(x * w))
      >>> float(kl(jnp.zeros(2), jnp.zeros(2), jnp.ones((4, 2))))
      0.0
    """

    def kl_fn(new_params: PyTree, old_params: PyTree, batch: PyTree) -> Array:
        old = jax.lax.stop_gradient(dist_fn(old_params, batch))
        new = dist_fn(new_params, batch)
        kl = getattr(old, "kl", None) or old.kl_divergence
        values = kl(new)
        if axis_name is None:
            return jnp.mean(values)
        check_axis_name(axis_name, "mean_kl")
        total, count = axis_psum((jnp.sum(values), jnp.asarray(values.size, values.dtype)),
                                 axis_name)
        return total / count

    return kl_fn


def _search(loss_fn, kl_fn, updates, params, batch, max_kl, shrink, max_tries, where, axis):
    """Shared body: checks, the backtracking search, a NaN-free update and status."""
    if params is None or batch is None:
        raise ValueError(f"{where}: update needs params and batch=.")
    check_same_structure(updates, params, "updates", "params")
    check_axis_name(axis, where)
    loss = None if loss_fn is None else (lambda p: axis_pmean(loss_fn(p, batch), axis))
    f0 = None if loss is None else loss(params)
    _, info = backtracking_line_search(
        loss, lambda q: axis_pmean(kl_fn(q, params, batch), axis), params, updates,
        max_kl=max_kl, shrink=shrink, max_tries=max_tries, loss_old=f0,
    )
    step_ok = tree_all_finite(updates)
    bits = [
        (~max_kl_is_valid(max_kl), Status.BAD_MAX_KL),
        (~step_ok, Status.NONFINITE_STEP),
    ]
    if f0 is not None:
        bits.append((~jnp.isfinite(f0), Status.NONFINITE_LOSS))
    status = sum(jnp.where(c, int(b), 0) for c, b in bits)
    status = status + jnp.where(~info.accepted & (status == 0), int(Status.NO_ACCEPTABLE_STEP), 0)
    out = tree_where(info.accepted, tree_scale(info.step_fraction, updates),
                     tree_zeros_like(updates))
    return out, info, jnp.asarray(status, jnp.int32)


def _check_search_args(shrink: float, max_tries: int) -> None:
    if not 0.0 < float(shrink) < 1.0:
        raise ValueError(f"shrink must be in (0, 1), got {shrink}.")
    if int(max_tries) < 1:
        raise ValueError(f"max_tries must be at least 1, got {max_tries}.")


def trust_region_line_search(
    loss_fn: Callable[[PyTree, PyTree], Array],
    kl_fn: Callable[[PyTree, PyTree, PyTree], Array],
    *,
    max_kl: float | Array,
    shrink: float = 0.8,
    max_tries: int = 10,
    axis_name: AxisName = None,
) -> optax.GradientTransformationExtraArgs:
    r"""TRPO's backtracking line search as an optax transform.

    Place it last in a chain, after the step has its final sign and size. Given the
    proposed update ``d`` it returns :math:`c^k d` for the first ``k`` whose measured KL
    ``kl_fn(params + c^k d, params, batch)`` is at most ``max_kl`` and whose loss
    ``loss_fn(params + c^k d, batch)`` is below ``loss_fn(params, batch)``; a zero update
    if no try passes (the old parameters are kept), also when ``d`` has a NaN or a
    traced ``max_kl`` is NaN, infinite or not positive (``status`` says which).

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar`` to be minimised.
      kl_fn: ``kl_fn(new_params, old_params, batch) -> scalar`` (see :func:`mean_kl`).
      max_kl: the KL bound.
      shrink: backtracking factor in ``(0, 1)``.
      max_tries: maximum number of candidates.
      axis_name: inside ``shard_map``/``pmap``, the axis the batch is split over:
        ``loss_fn`` and ``kl_fn`` return per-device means (over equal shards) and are
        averaged over it. The proposed update must be the same on every device.

    Returns:
      An :class:`optax.GradientTransformationExtraArgs` with a
      :class:`TrustRegionLineSearchState`.

    Raises:
      ValueError: for a concrete ``max_kl`` that is not finite and positive, a bad
        ``shrink`` or ``max_tries``, a ``loss_fn`` or ``kl_fn`` that does not return a
        scalar, a missing ``batch=``, or ``update`` called without ``init``'s state.

    Examples:
      >>> import jax.numpy as jnp, optax
      >>> from npgjax import trust_region_line_search
      >>> ls = trust_region_line_search(lambda p, b: jnp.sum((p - b) ** 2),
      ...                               lambda q, p, b: 0.5 * jnp.sum((q - p) ** 2),
      ...                               max_kl=0.1, shrink=0.5)
      >>> u, s = ls.update(jnp.ones(1), ls.init(jnp.zeros(1)), jnp.zeros(1),
      ...                  batch=jnp.ones(1))
      >>> u, int(s.tries), float(s.proposed_kl)
      (Array([0.25], dtype=float32), 3, 0.5)

    References:
      Schulman et al., *Trust Region Policy Optimization*, ICML 2015, appendix C.
    """
    check_positive(max_kl, "max_kl")
    _check_search_args(shrink, max_tries)

    def init_fn(params: PyTree) -> TrustRegionLineSearchState:
        del params
        z = jnp.zeros((), jnp.float32)
        return TrustRegionLineSearchState(
            jnp.zeros((), jnp.int32), jnp.asarray(False), z, z, z, z, z, jnp.zeros((), jnp.int32)
        )

    def update_fn(updates, state, params=None, *, batch=None, **extra_args):
        del extra_args
        check_state(state, TrustRegionLineSearchState, "trust_region_line_search")
        out, info, status = _search(
            loss_fn, kl_fn, updates, params, batch, max_kl, shrink, max_tries,
            "trust_region_line_search", axis_name,
        )
        return out, TrustRegionLineSearchState(
            info.tries,
            info.accepted,
            *(v.astype(jnp.float32) for v in (info.step_fraction, info.kl, info.improvement)),
            tree_norm(updates).astype(jnp.float32),
            info.proposed_kl.astype(jnp.float32),
            status,
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def kl_guard(
    kl_fn: Callable[[PyTree, PyTree, PyTree], Array],
    *,
    max_kl: float | Array,
    max_kl_factor: float = 1.5,
    shrink: float = 0.5,
    max_tries: int = 10,
    axis_name: AxisName = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Measure the KL of the proposed step and shrink it until it is within a bound.

    NPG's KL-scaled step trusts the quadratic model :math:`\tfrac12 d^\top F d`; where
    the model is wrong (large steps, saturated softmaxes, tiny standard deviations) the
    real KL can be orders of magnitude above ``max_kl``. Placed last in a chain, this
    returns :math:`c^k d` for the first ``k`` with
    ``kl_fn(params + c^k d, params, batch) <= max_kl_factor * max_kl``. Unlike
    :func:`trust_region_line_search` it does not test the loss, so a step within the
    bound is always kept whole. If no try passes the update is zero
    (``accepted=False``, ``status`` has ``NO_ACCEPTABLE_STEP``).

    Args:
      kl_fn: ``kl_fn(new_params, old_params, batch) -> scalar`` (see :func:`mean_kl`).
      max_kl: the KL bound of the step.
      max_kl_factor: tolerance factor :math:`\ge 1` on the bound.
      shrink: factor in ``(0, 1)`` applied after each failed try.
      max_tries: maximum number of candidates.
      axis_name: inside ``shard_map``/``pmap``, the axis the batch is split over;
        ``kl_fn``'s per-device value is averaged over it.

    Returns:
      An :class:`optax.GradientTransformationExtraArgs` with a :class:`KLGuardState`.

    Examples:
      >>> import jax.numpy as jnp
      >>> from npgjax import kl_guard
      >>> guard = kl_guard(lambda q, p, b: jnp.sum((q - p) ** 2), max_kl=0.1,
      ...                  max_kl_factor=1.0)
      >>> u, s = guard.update(jnp.ones(1), guard.init(jnp.zeros(1)), jnp.zeros(1),
      ...                     batch=jnp.ones(1))
      >>> u, float(s.kl), float(s.proposed_kl)
      (Array([0.25], dtype=float32), 0.0625, 1.0)
    """
    check_positive(max_kl, "max_kl")
    check_positive(max_kl_factor, "max_kl_factor")
    if float(max_kl_factor) < 1.0:
        raise ValueError(f"max_kl_factor must be at least 1, got {max_kl_factor}.")
    _check_search_args(shrink, max_tries)

    def init_fn(params: PyTree) -> KLGuardState:
        del params
        z = jnp.zeros((), jnp.float32)
        return KLGuardState(jnp.zeros((), jnp.int32), jnp.asarray(False), z, z, z,
                            jnp.zeros((), jnp.int32))

    def update_fn(updates, state, params=None, *, batch=None, **extra_args):
        del extra_args
        check_state(state, KLGuardState, "kl_guard")
        out, info, status = _search(
            None, kl_fn, updates, params, batch, max_kl_factor * max_kl, shrink, max_tries,
            "kl_guard", axis_name,
        )
        shrunk = info.accepted & (info.tries > 1)
        status = status + jnp.where(shrunk, int(Status.KL_GUARD_SHRUNK), 0).astype(jnp.int32)
        return out, KLGuardState(
            info.tries,
            info.accepted,
            info.step_fraction.astype(jnp.float32),
            info.kl.astype(jnp.float32),
            info.proposed_kl.astype(jnp.float32),
            status,
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)

