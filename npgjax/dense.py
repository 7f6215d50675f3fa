r"""Dense Fisher matrices ``[P, P]``, for small models and for checks.

Built two independent ways: :func:`dense_fisher` from the per-sample score matrix
(``vmap`` of ``grad``), :func:`dense_analytic_fisher` by applying the matrix-free
analytic product of :mod:`npgjax.fisher` to a basis. Both materialise what the
products avoid, so they are for small ``P``.
"""

from __future__ import annotations

import jax.numpy as jnp

from npgjax._tree import AxisName, check_mask, check_positive, materialize, sample_weights
from npgjax.fisher import Array, DistFn, LogProbFn, PyTree, analytic_fisher_vector_product
from npgjax.scores import score_matrix

__all__ = ["dense_analytic_fisher", "dense_fisher"]


def dense_fisher(
    log_prob_fn: LogProbFn,
    params: PyTree,
    batch: PyTree,
    *,
    damping: Array | float = 0.0,
    mask: Array | None = None,
    centered: bool = False,
    chunk_size: int | None = None,
) -> Array:
    r"""Dense empirical Fisher ``[P, P]`` from per-sample scores (``vmap`` of ``grad``).

    .. math:: F = S^\top \mathrm{diag}(w) S + \lambda I

    in ``jax.flatten_util.ravel_pytree(params)`` order. It materialises the ``N x P``
    score matrix, so use it for small models and for checks.

    Args:
      log_prob_fn: ``log_prob_fn(params, batch) -> [N]``.
      params: parameter pytree.
      batch: batch pytree.
      damping: :math:`\lambda \ge 0`.
      mask: optional ``[N]`` sample mask.
      centered: subtract the mean score.
      chunk_size: optional chunking of the score computation.

    Returns:
      The ``[P, P]`` matrix.

    Examples:
      >>> import jax.numpy as jnp
      >>> from npgjax import dense_fisher
      >>> dense_fisher(lambda w, x: x @ w, jnp.zeros(2), jnp.eye(2))
      Array([[0.5, 0. ],
             [0. , 0.5]], dtype=float32)
    """
    check_positive(damping, "damping", allow_zero=True)
    S = score_matrix(log_prob_fn, params, batch, chunk_size=chunk_size)
    check_mask(mask, S.shape[:1], "dense_fisher")
    w = sample_weights(mask, S.shape[:1], S.dtype)
    if centered:
        S = S - w @ S
    return (S * w[:, None]).T @ S + damping * jnp.eye(S.shape[1], dtype=S.dtype)


def dense_analytic_fisher(
    dist_fn: DistFn,
    params: PyTree,
    batch: PyTree,
    *,
    damping: Array | float = 0.0,
    mask: Array | None = None,
    per: str = "step",
    axis_name: AxisName = None,
) -> Array:
    """Dense analytic Fisher ``[P, P]``, by applying the matrix-free product to a basis.

    Args:
      dist_fn: ``dist_fn(params, batch) -> distribution``.
      params: parameter pytree.
      batch: batch pytree.
      damping: :math:`\\lambda \\ge 0`.
      mask: optional mask of the distribution's batch shape.
      per: ``"step"`` or ``"trajectory"``.
      axis_name: the device axis of the batch inside ``shard_map``/``pmap``.

    Returns:
      The ``[P, P]`` matrix in ``ravel_pytree(params)`` order.

    Examples:
      >>> import jax.numpy as jnp
      >>> from npgjax import Categorical, dense_analytic_fisher
      >>> dense_analytic_fisher(lambda w, x: Categorical(x @ w), jnp.zeros((1, 2)),
      ...                       jnp.ones((3, 1)))
      Array([[ 0.25, -0.25],
             [-0.25,  0.25]], dtype=float32)
    """
    fvp = analytic_fisher_vector_product(
        dist_fn, params, batch, damping=damping, mask=mask, per=per, axis_name=axis_name
    )
    return materialize(fvp, params)
