r"""Exact damped natural gradient through the ``N x N`` Gram matrix of the scores.

With ``N`` samples (e.g. trajectories) and ``P`` parameters, the empirical Fisher
:math:`F = \hat S^\top \hat S` (rows :math:`\hat s_i = \sqrt{w_i}\, s_i`, weights
:math:`w_i = 1/N`) has rank at most ``N``. When ``N`` is well below ``P`` the Woodbury
identity turns the ``P x P`` solve into an ``N x N`` one:

.. math::
    (\hat S^\top \hat S + \lambda I_P)^{-1} g
    = \frac{1}{\lambda}\Big(g - \hat S^\top (\hat S \hat S^\top + \lambda I_N)^{-1}
    \hat S g\Big),

which, for :math:`w_i = 1/N`, is
:math:`\big(g - S^\top (N \lambda I + S S^\top)^{-1} S g\big) / \lambda`. It is exact
for every ``g``, not only for ``g`` in the span of the scores. This is the
"MinSR" / sample-space trick of neural quantum states, applied to policies.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from npgjax._tree import (
    AxisName,
    check_axis_name,
    check_mask,
    check_positive,
    check_same_structure,
    gather_rows,
    is_concrete,
    sample_weights,
    tree_norm,
    tree_sub,
    vary,
)
from npgjax.fisher import fisher_vector_product
from npgjax.scores import num_samples, score_matrix
from npgjax.solvers import SolveInfo

Array = jax.Array
PyTree = Any
LogProbFn = Callable[[PyTree, PyTree], Array]

__all__ = ["sample_space_natural_gradient"]

_WHERE = "sample_space_natural_gradient"
_HI = jax.lax.Precision.HIGHEST


def _scaled_scores(S: Array, mask: Array | None, centered: bool) -> Array:
    """Rows of ``S_hat`` with ``S_hat^T S_hat`` the Fisher of fisher_vector_product."""
    w = sample_weights(mask, S.shape[:1], S.dtype)
    if centered:
        # fisher_vector_product gives S^T (W - w w^T) S; (I - a 1 w^T) S reproduces it
        # for a = 1 / (1 + sqrt(1 - sum w)) (a = 1 when the weights sum to one).
        a = 1.0 / (1.0 + jnp.sqrt(jnp.maximum(1.0 - jnp.sum(w), 0.0)))
        S = S - a * jnp.dot(w, S, precision=_HI)
    return S * jnp.sqrt(w)[:, None]


# One matrix at a time under vmap: jaxlib's batched LAPACK kernels on the CPU can
# deadlock a small thread pool (see the README's Known issues and npgjax.solvers).
@jax.custom_batching.sequential_vmap
def _cholesky(A: Array) -> Array:
    return jnp.linalg.cholesky(A)


@jax.custom_batching.sequential_vmap
def _cho_solve(L: Array, b: Array) -> Array:
    return jax.scipy.linalg.cho_solve((L, True), b)


def _dual_solve(S: Array, g: Array, lam: Array) -> Array:
    """Woodbury, with one step of iterative refinement on the ``P``-space residual."""
    L = _cholesky(jnp.dot(S, S.T, precision=_HI) + lam * jnp.eye(S.shape[0], dtype=S.dtype))

    def solve(r: Array) -> Array:
        z = _cho_solve(L, jnp.dot(S, r, precision=_HI))
        return (r - jnp.dot(z, S, precision=_HI)) / lam

    x = solve(g)
    r = g - jnp.dot(jnp.dot(S, x, precision=_HI), S, precision=_HI) - lam * x
    return x + solve(r)


def _primal_solve(S: Array, g: Array, lam: Array) -> Array:
    """Dense ``P x P`` solve, for ``N >= P`` (exact also without damping)."""
    A = jnp.dot(S.T, S, precision=_HI) + lam * jnp.eye(S.shape[1], dtype=S.dtype)
    return _cho_solve(_cholesky(A), g)


def _check_inputs(log_prob_fn, params, batch, grads, damping, mask, devices) -> tuple[int, int]:
    check_positive(damping, "damping", allow_zero=True)
    if jnp.ndim(damping) != 0:
        raise ValueError(f"{_WHERE}: damping must be a scalar, got shape {jnp.shape(damping)}.")
    check_same_structure(grads, params, "grads", "params")
    n = num_samples(log_prob_fn, params, batch, _WHERE)
    check_mask(mask, (n,), _WHERE)
    n = n * devices  # the global batch
    if mask is not None and is_concrete(mask) and np.any(np.asarray(mask) < 0):
        raise ValueError(f"{_WHERE}: mask must be non-negative (sample weights).")
    p = sum(int(np.prod(jnp.shape(x))) for x in jax.tree.leaves(params))
    if n < p and is_concrete(damping) and float(np.asarray(damping)) == 0.0:
        raise ValueError(
            f"{_WHERE}: damping=0 with N={n} samples < P={p} parameters: the Fisher has rank "
            "at most N and is singular. Use damping > 0."
        )
    return n, p


def sample_space_natural_gradient(
    log_prob_fn: LogProbFn,
    params: PyTree,
    batch: PyTree,
    grads: PyTree,
    *,
    damping: Array | float,
    centered: bool = False,
    chunk_size: int | None = None,
    mask: Array | None = None,
    axis_name: AxisName = None,
) -> tuple[PyTree, SolveInfo]:
    r"""Exact :math:`(F + \lambda I)^{-1} g` for the empirical Fisher, in sample space.

    .. math::
        F = \sum_i w_i\, s_i s_i^\top, \quad
        x = \frac{1}{\lambda}\Big(g - \hat S^\top (\hat S \hat S^\top + \lambda I_N)^{-1}
        \hat S g\Big), \quad \hat S_i = \sqrt{w_i}\, s_i,

    with :math:`s_i = \nabla_\theta \log p_\theta(x_i)` (minus the weighted mean score
    when ``centered``) and :math:`w_i = m_i / \max(\sum_j m_j, 1)` (:math:`1/N` without a
    mask), the same Fisher as :func:`npgjax.fisher_vector_product`. For ``w = 1/N`` the
    inner matrix is :math:`(N \lambda I + S S^\top) / N`. The ``N x N`` system is solved
    by Cholesky (one matrix at a time under ``vmap``), followed by one step of iterative
    refinement in parameter space, so the result is exact for any ``grads``. When
    ``N >= P`` the ``P x P`` system :math:`\hat S^\top \hat S + \lambda I` is solved
    instead, which is also exact for ``damping=0`` if :math:`F` has full rank.

    Cost: ``N`` per-sample gradients (the ``N x P`` score matrix is held; ``chunk_size``
    caps the activations computed at once), :math:`O(N^2 P)` for the Gram matrix,
    :math:`O(N^3)` for the factorisation, and one Fisher-vector product for the
    reported residual. If the solve is not finite (a traced ``damping`` of 0 with
    ``N < P``, or a singular undamped Fisher), ``x`` is zero and ``converged`` is False;
    it is never NaN.

    Args:
      log_prob_fn: ``log_prob_fn(params, batch) -> [N]`` (per step or per trajectory,
        see :func:`npgjax.policy_log_prob_fn`).
      params: parameter pytree.
      batch: batch pytree; every leaf has leading axis ``N``.
      grads: right-hand side ``g``, a pytree like ``params``.
      damping: :math:`\lambda \ge 0`; 0 needs ``N >= P``.
      centered: subtract the mean score (the covariance of the scores).
      chunk_size: optional number of samples per chunk of the score computation.
      mask: optional ``[N]`` non-negative sample weights (0 for padding).
      axis_name: inside ``shard_map``/``pmap``, the axis the batch is split over; the
        score matrices of all devices are gathered (a ``psum``) and every device solves
        the same global ``N x N`` system. The gradient must already be global.

    Returns:
      ``(x, SolveInfo)``: ``x`` like ``grads``; ``iterations = 0``, ``residual_norm``
      the true :math:`\|g - (F + \lambda I) x\|` from one
      :func:`npgjax.fisher_vector_product`, ``converged`` whether ``x`` is finite with
      a small normwise backward error, :math:`\|g - (F + \lambda I) x\| \le
      \tau (\|g\| + (\operatorname{tr} F + \lambda) \|x\|)` with
      :math:`\tau = 100\,\varepsilon` of the dtype (the relative residual
      :math:`\|g - (F + \lambda I) x\| / \|g\|` of an exact float32 solve can be
      ``1e-3`` or more when :math:`\lambda \ll \|F\|`).

    Examples:
      >>> import jax.numpy as jnp
      >>> from npgjax import sample_space_natural_gradient
      >>> log_prob_fn = lambda w, x: x @ w  # scores are the rows of x
      >>> x, info = sample_space_natural_gradient(
      ...     log_prob_fn, jnp.zeros(3), jnp.array([[2.0, 0.0, 0.0]]),
      ...     jnp.array([4.0, 1.0, 0.0]), damping=1.0)
      >>> x, bool(info.converged)
      (Array([0.8, 1. , 0. ], dtype=float32), True)

    References:
      Chen and Heyl, *Efficient optimization of deep neural quantum states toward
      machine precision*, arXiv:2302.01941, 2023 ("MinSR"; Nature Physics 2024).
      Rende, Viteritti, Lavagna, Becca and Goldt, *A simple linear algebra identity to
      optimize large-scale neural network quantum states*, arXiv:2310.05715, 2023
      (Communications Physics 2024).
    """
    devices = check_axis_name(axis_name, _WHERE)
    n, p = _check_inputs(log_prob_fn, params, batch, grads, damping, mask, devices)
    flat_g, unravel = ravel_pytree(grads)
    S = score_matrix(log_prob_fn, vary(params, axis_name), batch, chunk_size=chunk_size)
    gmask = mask
    if axis_name is not None:  # every device holds the global score matrix
        S = gather_rows(S, axis_name)
        gmask = None if mask is None else gather_rows(jnp.asarray(mask, S.dtype), axis_name)
    dtype = jnp.result_type(S.dtype, flat_g.dtype)
    S = _scaled_scores(S.astype(dtype), gmask, centered)
    g, lam = flat_g.astype(dtype), jnp.asarray(damping, dtype)
    x = _dual_solve(S, g, lam) if n < p else _primal_solve(S, g, lam)
    ok = jnp.all(jnp.isfinite(x))
    x = unravel(jnp.where(ok, x, 0.0))
    fvp = fisher_vector_product(
        log_prob_fn, params, batch, damping=damping, mask=mask, centered=centered,
        axis_name=axis_name,
    )
    res = tree_norm(tree_sub(grads, fvp(x)))
    # Normwise backward error: tr(F) + lambda bounds ||F + lambda I||.
    scale = tree_norm(grads) + (jnp.sum(S * S) + lam) * tree_norm(x)
    tol = 100 * jnp.finfo(dtype).eps
    converged = ok & (res <= tol * scale)
    return x, SolveInfo(jnp.zeros((), jnp.int32), res, converged)
