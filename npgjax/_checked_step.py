"""The natural step's safety net: check, rescue and scale a solver's answer.

Used by :func:`npgjax.precondition_by_fisher`. Given the gradient ``g`` and the solver's
``x ~ (F + lambda I)^-1 g``, one extra product ``A x`` checks the answer against CG's
first iterate, falls back to the scaled gradient when rounding spoilt it, scales the
step to the KL bound and sets the :class:`npgjax.Status` bits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from npgjax._tree import (
    AxisName,
    axis_all,
    mask_is_valid,
    tree_all_finite,
    tree_scale,
    tree_vdot,
    tree_where,
)
from npgjax.solvers import SolveInfo
from npgjax.status import Status
from npgjax.steps import max_kl_is_valid, trust_region_scale

Array = jax.Array
PyTree = Any

__all__ = ["checked_step", "hyper_status"]

#: Relative excess of x^T (F + lambda I) x over g^T x that counts as a CG inaccuracy
#: (float32 rounding on a truncated CG moves it by about 1%).
_MODEL_RTOL = 0.1
#: Fraction of the step's model KL below which the undamped Fisher counts as blind to it.
_DAMPED_FRACTION = 1e-2
#: Margin on CG's objective before an answer counts as worse than its first iterate.
_Q_RTOL = 1e-3


def _bits(flags: list[tuple[Array, Status]]) -> Array:
    return sum((jnp.where(c, int(b), 0) for c, b in flags), jnp.zeros((), jnp.int32))


def checked_step(
    matvec: Callable[[PyTree], PyTree], g: PyTree, x: PyTree, info: SolveInfo,
    max_kl: Array | float | None, damping: Array | float,
) -> tuple[PyTree, Array, Array, Array, Array, Array]:
    """Check, rescue and scale the solver's answer; one extra product ``matvec(x)``."""
    gg, gx = tree_vdot(g, g), tree_vdot(g, x)
    ax = matvec(x)
    xax = tree_vdot(x, ax)
    gag = info.first_curvature
    if gag is None:  # a solver without CG's first curvature: one more product
        gag = tree_vdot(g, matvec(g))
    curv_ok = (gag > 0) & jnp.isfinite(gag)
    t = gg / jnp.where(curv_ok, gag, 1.0)
    # CG minimises q(x) = x^T A x / 2 - g^T x and its first iterate t g has q = -t g^T g / 2;
    # an answer worse than that (or with g^T x <= 0) was spoilt by rounding: use t g.
    q_first = -0.5 * t * gg
    q_x = 0.5 * xax - gx
    x_ok = (gx > 0) & jnp.isfinite(q_x) & tree_all_finite(x)
    x_ok = x_ok & (~curv_ok | (q_x <= q_first + _Q_RTOL * jnp.abs(q_first)))
    fallback = (gg > 0) & ~x_ok
    x = tree_where(fallback, tree_scale(t, g), x)
    gx = jnp.where(fallback, t * gg, gx)
    xax = jnp.where(fallback, t * gg, xax)
    # In exact arithmetic x^T A x = g^T x; a larger real product means CG lost accuracy,
    # and scaling with it gives the smaller, safe step.
    inaccurate = ~fallback & (xax > (1.0 + _MODEL_RTOL) * gx)
    denom = jnp.where(inaccurate, xax, gx)
    scale = jnp.ones((), gx.dtype) if max_kl is None else trust_region_scale(denom, max_kl)
    xnorm2 = tree_vdot(x, x)
    xfx = jnp.maximum(xax - damping * xnorm2, 0.0)  # the undamped quadratic form
    pred_kl = 0.5 * scale**2 * xfx
    g_finite = tree_all_finite(g)
    op_bad = jnp.where(
        fallback, ~jnp.isfinite(gag), ~jnp.isfinite(xax) | ~jnp.isfinite(info.residual_norm)
    )
    status = _bits([
        (~g_finite, Status.NONFINITE_GRADIENT),
        (g_finite & op_bad, Status.NONFINITE_FISHER),
        (g_finite & ~op_bad & fallback & ~curv_ok, Status.SINGULAR_FISHER),
        (g_finite & ~op_bad & fallback & curv_ok, Status.GRADIENT_FALLBACK),
        (inaccurate, Status.CG_INACCURATE),
        ((xax > 0) & (xfx < _DAMPED_FRACTION * xax), Status.DAMPING_DOMINATED),
    ])
    denom_c = jnp.sqrt(gg) * jnp.sqrt(xnorm2)
    cosine = jnp.where(denom_c > 0, gx / jnp.where(denom_c > 0, denom_c, 1.0), 0.0)
    return x, scale, gx, pred_kl, cosine, status


def hyper_status(max_kl: Array | float | None, damping: Array | float, mask: Array | None,
                 axis_name: AxisName) -> Array:
    """Status bits of bad hyperparameters or a bad mask (traced values, under jit)."""
    lam = jnp.asarray(damping)
    flags = [
        (~(jnp.isfinite(lam) & (lam >= 0)), Status.BAD_DAMPING),
        (~axis_all(mask_is_valid(mask), axis_name), Status.BAD_MASK),  # same on every device
    ]
    if max_kl is not None:
        flags.append((~max_kl_is_valid(max_kl), Status.BAD_MAX_KL))
    return _bits(flags)
