r"""Solvers for :math:`A x = b` with a symmetric positive (semi-)definite linear map.

A solver takes a linear map ``matvec(v) -> A v`` over pytrees (any Fisher operator,
or any other) and a right-hand side ``b``, and returns ``(x, SolveInfo)``. It knows
nothing about Fisher matrices, so every operator works with every solver. Pass a
solver with its options bound, e.g. ``functools.partial(conjugate_gradient,
max_iters=20)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from npgjax._tree import (
    check_positive,
    is_concrete,
    materialize,
    tree_axpy,
    tree_norm,
    tree_sub,
    tree_vdot,
    tree_zeros_like,
)

Array = jax.Array
PyTree = Any
MatVec = Callable[[PyTree], PyTree]
Solver = Callable[[MatVec, PyTree], tuple[PyTree, "SolveInfo"]]

__all__ = ["SolveInfo", "cholesky_solve", "conjugate_gradient"]


class SolveInfo(NamedTuple):
    """Diagnostics of a linear solve.

    Attributes:
      iterations: iterations used (int32; 0 for a direct solve).
      residual_norm: :math:`\\|b - A x\\|` (CG's recursive estimate, exact in exact
        arithmetic).
      converged: whether the residual met the tolerance.
      first_curvature: :math:`b^\\top A b`, from CG's first iteration (started from
        zero); None for solvers that do not compute it. It sizes CG's first iterate
        :math:`(b^\\top b / b^\\top A b)\\, b`, which
        :func:`npgjax.precondition_by_fisher` falls back to when a solve goes wrong.
    """

    iterations: Array
    residual_norm: Array
    converged: Array
    first_curvature: Array | None = None


def conjugate_gradient(
    matvec: MatVec,
    b: PyTree,
    *,
    x0: PyTree | None = None,
    max_iters: int = 10,
    tol: float | None = None,
    atol: float = 0.0,
) -> tuple[PyTree, SolveInfo]:
    r"""Conjugate gradient over pytrees, jit-safe, with diagnostics.

    Runs at most ``max_iters`` iterations of CG in a ``lax.while_loop``, stopping once
    :math:`\|r_k\| \le \max(\mathrm{tol} \cdot \|b\|, \mathrm{atol})`. The default
    ``tol`` is ``10 * eps`` of ``b``'s dtype (1.2e-6 in float32, 2.2e-15 in float64):
    below it the recursive residual no longer tracks the true one, and further
    iterations only add rounding error. ``tol=0`` runs exactly ``max_iters`` iterations
    (barring a breakdown). Each iteration
    costs one ``matvec``. From ``x0 = 0`` every iterate satisfies
    :math:`x_k^\top A x_k = b^\top x_k` (Galerkin condition), even when truncated, which
    is what makes ``g^T x`` a sound KL estimate for a truncated solve. A zero ``b``
    returns ``x = 0`` after zero iterations. If :math:`p^\top A p \le 0` (the map is not
    positive definite on the Krylov space) it stops and reports ``converged=False``; if
    it is not finite (a NaN in the operator) the reported residual is NaN.

    Args:
      matvec: ``v -> A v`` for pytrees like ``b``.
      b: right-hand side pytree.
      x0: optional start; costs one extra ``matvec``.
      max_iters: maximum number of iterations (static).
      tol: relative tolerance on the residual norm (None: ``10 * eps`` of the dtype).
      atol: absolute tolerance on the residual norm.

    Returns:
      ``(x, SolveInfo)``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from npgjax import conjugate_gradient
      >>> A = jnp.array([[4.0, 1.0], [1.0, 3.0]])
      >>> x, info = conjugate_gradient(lambda v: A @ v, jnp.array([1.0, 2.0]), tol=1e-6)
      >>> x.round(4), int(info.iterations)
      (Array([0.0909, 0.6364], dtype=float32), 2)
    """
    if is_concrete(max_iters) and int(max_iters) < 0:
        raise ValueError(f"max_iters must be non-negative, got {max_iters}.")
    if tol is None:
        tol = default_tol(b)
    check_positive(tol, "tol", allow_zero=True)
    check_positive(atol, "atol", allow_zero=True)
    if x0 is None:
        x = tree_zeros_like(b)
        r = b
    else:
        x = x0
        r = tree_sub(b, matvec(x0))
    rr = tree_vdot(r, r)
    bnorm = tree_norm(b)
    thresh2 = jnp.maximum(tol * bnorm, atol) ** 2

    def cond(state):
        k, _, _, _, rr, ok, _ = state
        return (k < max_iters) & (rr > thresh2) & ok

    def body(state):
        k, x, r, p, rr, _, pap0 = state
        Ap = matvec(p)
        pAp = tree_vdot(p, Ap)
        pap0 = jnp.where(k == 0, pAp, pap0)
        ok = pAp > 0
        alpha = jnp.where(ok, rr / jnp.where(ok, pAp, 1.0), 0.0)
        x = tree_axpy(alpha, p, x)
        r = tree_axpy(-alpha, Ap, r)
        rr_new = tree_vdot(r, r)
        beta = jnp.where(ok, rr_new / jnp.where(rr > 0, rr, 1.0), 0.0)
        p = tree_axpy(beta, p, r)
        # A non-finite p^T A p (a NaN operator) is reported as a NaN residual.
        rr_out = jnp.where(ok, rr_new, jnp.where(jnp.isfinite(pAp), rr, jnp.nan))
        return k + 1, x, r, p, rr_out, ok, pap0

    nan = jnp.full((), jnp.nan, rr.dtype)
    init = (jnp.zeros((), jnp.int32), x, r, r, rr, jnp.asarray(True), nan)
    k, x, _, _, rr, ok, pap0 = jax.lax.while_loop(cond, body, init)
    res = jnp.sqrt(rr)
    # p_0 = b only when starting from zero.
    first = pap0 if x0 is None else None
    return x, SolveInfo(k, res, ok & (rr <= thresh2), first)


def default_tol(b: PyTree) -> float:
    """``10 * eps`` of the pytree's floating dtype: CG's default relative tolerance."""
    leaves = jax.tree.leaves(b)
    dtype = jnp.result_type(*leaves) if leaves else jnp.float32
    if not jnp.issubdtype(dtype, jnp.inexact):
        dtype = jnp.float32
    return 10.0 * float(jnp.finfo(dtype).eps)


@jax.custom_batching.sequential_vmap
def _dense_solve(A: Array, b: Array) -> Array:
    # Under vmap, one matrix at a time: jaxlib's batched LAPACK kernels on the CPU block
    # an XLA pool thread while they wait, and two at once (here the Cholesky and the
    # eigendecomposition of the fallback) can deadlock a small pool.
    L = jnp.linalg.cholesky(A)

    def chol(_):
        return jax.scipy.linalg.cho_solve((L, True), b)

    def pinv(_):
        return jnp.linalg.pinv(A, hermitian=True) @ b

    return jax.lax.cond(jnp.all(jnp.isfinite(L)), chol, pinv, None)


def cholesky_solve(matvec: MatVec | Array, b: PyTree) -> tuple[PyTree, SolveInfo]:
    r"""Direct solve by a dense Cholesky factorisation, for small parameter counts.

    Builds the ``P x P`` matrix by applying ``matvec`` to a basis (or takes a matrix in
    ``ravel_pytree(b)`` order), factorises it and solves. If the matrix is singular (e.g.
    an undamped empirical Fisher with fewer samples than parameters) the Cholesky factor
    is not finite, and it falls back to the pseudo-inverse (least-norm solution) rather
    than returning NaN.

    Args:
      matvec: ``v -> A v`` over pytrees like ``b``, or a ``[P, P]`` array.
      b: right-hand side pytree.

    Returns:
      ``(x, SolveInfo)`` with ``iterations = 0``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from npgjax import cholesky_solve
      >>> x, _ = cholesky_solve(jnp.array([[2.0, 0.0], [0.0, 4.0]]), jnp.array([1.0, 1.0]))
      >>> x.round(4)
      Array([0.5 , 0.25], dtype=float32)
    """
    flat_b, unravel = ravel_pytree(b)
    if callable(matvec):
        A = materialize(matvec, b)
    else:
        A = jnp.asarray(matvec)
        if A.shape != (flat_b.size, flat_b.size):
            raise ValueError(
                f"cholesky_solve: matrix has shape {A.shape} but b has {flat_b.size} entries."
            )
    A = 0.5 * (A + A.T)
    x = _dense_solve(A, flat_b)
    res = jnp.linalg.norm(flat_b - A @ x)
    scale = jnp.maximum(jnp.linalg.norm(flat_b), jnp.finfo(flat_b.dtype).tiny)
    converged = res <= 1e-4 * scale if flat_b.dtype == jnp.float32 else res <= 1e-8 * scale
    return unravel(x), SolveInfo(jnp.zeros((), jnp.int32), res, converged)
