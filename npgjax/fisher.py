r"""Fisher information operators: matrix-free products (dense matrices: :mod:`npgjax.dense`).

Two estimators of the Fisher matrix of a policy:

* **empirical** (score) Fisher, the seed's formula, from sampled actions:

  .. math:: F = \frac{1}{N} \sum_i s_i s_i^\top, \qquad s_i = \nabla_\theta \log p_\theta(x_i)

  Its product is a jvp of the ``N`` log-probabilities followed by a vjp:
  :math:`F v = J^\top (J v) / N`. It needs only ``log_prob_fn`` and works for any
  distribution, and over whole trajectories.

* **analytic** Fisher, the exact expectation over actions given the visited states
  (equal to the Hessian of the mean KL, which TRPO uses):

  .. math:: F = \frac{1}{N} \sum_s J_s^\top F_{\mathrm{dist}}(s) J_s

  with :math:`J_s` the Jacobian of the distribution's parameters (logits, or mean and log
  std) at state ``s``. Its product is jvp, then the distribution's closed-form Fisher,
  then vjp. There is no double backprop.

Both products linearise the network once (``jax.linearize``) when the operator is
built, so each product re-uses the forward pass, and neither ever materialises the
``N x P`` Jacobian. Damping adds :math:`\lambda v`.

Over several devices: under ``jax.jit`` with a batch sharded by ``NamedSharding`` the
code needs nothing (XLA inserts the reductions). Inside ``jax.shard_map`` or
``jax.pmap`` each device holds a slice of the batch; with ``axis_name`` every mean over
samples (the product, the weights and mask sum, the centred mean score) is taken over
the global batch, so the product equals the single-device one on the concatenated batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from npgjax._tree import (
    AxisName,
    axis_psum,
    check_axis_name,
    check_mask,
    check_positive,
    check_same_structure,
    sample_weights,
    tree_axpy,
    vary,
)
from npgjax.distributions import distribution_fisher_vector_product
from npgjax.scores import num_samples

Array = jax.Array
PyTree = Any
LogProbFn = Callable[[PyTree, PyTree], Array]
DistFn = Callable[[PyTree, PyTree], Any]
MatVec = Callable[[PyTree], PyTree]
FisherFn = Callable[..., MatVec]

__all__ = [
    "analytic_fisher",
    "analytic_fisher_vector_product",
    "damped",
    "empirical_fisher",
    "fisher_vector_product",
]


def damped(matvec: MatVec, damping: Array | float, like: PyTree | None = None) -> MatVec:
    r"""``v -> A v + damping * v``, checking that ``v`` is shaped like ``like``.

    Args:
      matvec: a linear pytree map.
      damping: the Tikhonov term :math:`\lambda \ge 0`.
      like: optional example pytree; when given, each ``v`` is checked against it.

    Returns:
      The damped linear map.

    Examples:
      >>> import jax.numpy as jnp
      >>> from npgjax import damped
      >>> damped(lambda v: 2 * v, 0.5)(jnp.ones(2))
      Array([2.5, 2.5], dtype=float32)
    """
    check_positive(damping, "damping", allow_zero=True)

    def mv(v: PyTree) -> PyTree:
        if like is not None:
            check_same_structure(v, like, "v", "params")
        return tree_axpy(damping, v, matvec(v))

    return mv


def fisher_vector_product(
    log_prob_fn: LogProbFn,
    params: PyTree,
    batch: PyTree,
    *,
    damping: Array | float = 0.0,
    mask: Array | None = None,
    centered: bool = False,
    axis_name: AxisName = None,
) -> MatVec:
    r"""Empirical (score) Fisher-vector product, matrix-free.

    .. math::
        (F + \lambda I) v = \sum_i w_i\, s_i (s_i^\top v) + \lambda v,
        \qquad w_i = m_i / \textstyle\sum_j m_j

    computed as ``J^T (w * (J v))`` with ``J v`` from a linearised jvp and ``J^T`` its
    transpose. ``log_prob_fn`` is linearised once here; each call of the returned
    function costs one jvp and one vjp through the network. With ``centered=True`` the
    mean score is subtracted first (the covariance of the scores).

    A sample may be a state-action pair (the per-step Fisher) or a whole trajectory
    whose log-prob is the masked sum over time (the seed's trajectory Fisher); see
    :func:`npgjax.policy_log_prob_fn`.

    Args:
      log_prob_fn: ``log_prob_fn(params, batch) -> [N]``.
      params: parameter pytree (the linearisation point).
      batch: batch pytree; every leaf has leading axis ``N``.
      damping: :math:`\lambda \ge 0`.
      mask: optional ``[N]`` sample mask (padding samples get 0); finite and >= 0.
      centered: subtract the mean score.
      axis_name: inside ``shard_map``/``pmap``, the axis the batch is split over: the
        weights, the mean score and the product are then global (``psum``); ``v`` and
        ``params`` are the same on every device.

    Returns:
      ``fvp(v)``, a linear function from pytrees like ``params`` to the same.

    Examples:
      >>> import jax.numpy as jnp
      >>> from npgjax import fisher_vector_product
      >>> fn = lambda w, x: x @ w
      >>> fvp = fisher_vector_product(fn, jnp.zeros(2), jnp.eye(2), damping=0.1)
      >>> fvp(jnp.array([1.0, 0.0]))
      Array([0.6, 0. ], dtype=float32)
    """
    check_positive(damping, "damping", allow_zero=True)
    n = num_samples(log_prob_fn, params, batch, "fisher_vector_product")
    check_mask(mask, (n,), "fisher_vector_product")
    check_axis_name(axis_name, "fisher_vector_product")
    at = vary(params, axis_name)  # a per-device vjp, reduced explicitly below
    logp, jvp_fn = jax.linearize(lambda p: log_prob_fn(p, batch), at)
    vjp_fn = jax.linear_transpose(jvp_fn, at)
    w = sample_weights(mask, (n,), logp.dtype, axis_name)

    def fvp(v: PyTree) -> PyTree:
        check_same_structure(v, params, "v", "params")
        u = jvp_fn(vary(v, axis_name))
        if centered:
            u = u - axis_psum(jnp.sum(w * u), axis_name)
        (out,) = vjp_fn(w * u)
        return tree_axpy(damping, v, axis_psum(out, axis_name))

    return fvp


def _batch_shape(dist: Any) -> tuple[int, ...]:
    bs = getattr(dist, "batch_shape", None)
    if bs is not None:
        return tuple(bs)
    return tuple(jnp.shape(jax.tree.leaves(dist)[0])[:-1])


def _analytic_weights(
    batch_shape: tuple[int, ...], mask: Array | None, per: str, dtype: Any, axis_name: AxisName
) -> Array:
    if per == "step":
        return sample_weights(mask, batch_shape, dtype, axis_name)
    if per != "trajectory":
        raise ValueError(f"per must be 'step' or 'trajectory', got {per!r}.")
    if len(batch_shape) != 2:
        raise ValueError(
            "per='trajectory' needs a distribution with batch shape [N, T]; got "
            f"{batch_shape}."
        )
    m = jnp.ones(batch_shape, dtype) if mask is None else jnp.asarray(mask, dtype)
    return m / (batch_shape[0] * check_axis_name(axis_name, "analytic_fisher_vector_product"))


def _check_batch_axis(batch: PyTree, bshape: tuple[int, ...]) -> None:
    # An action of shape [1, D] next to N observations would broadcast silently.
    if not bshape:
        return
    for path, leaf in jax.tree_util.tree_leaves_with_path(batch):
        shape = jnp.shape(leaf)
        if shape and shape[0] != bshape[0]:
            raise ValueError(
                f"analytic_fisher_vector_product: batch leaf {jax.tree_util.keystr(path)} "
                f"has shape {shape}, but the distribution has batch shape {bshape}; every "
                f"batch leaf needs leading axis {bshape[0]}."
            )


def analytic_fisher_vector_product(
    dist_fn: DistFn,
    params: PyTree,
    batch: PyTree,
    *,
    damping: Array | float = 0.0,
    mask: Array | None = None,
    per: str = "step",
    axis_name: AxisName = None,
) -> MatVec:
    r"""Analytic Fisher-vector product: jvp, the distribution's Fisher, vjp.

    .. math::
        (F + \lambda I) v = \sum_s w_s J_s^\top F_{\mathrm{dist}}(s) J_s v + \lambda v

    where :math:`J_s` is the Jacobian of the distribution parameters at state ``s`` and
    :math:`F_{\mathrm{dist}}` the closed form of the distribution (for a categorical,
    :math:`\mathrm{diag}(p) - pp^\top`; for a Gaussian in ``(mu, log sigma)``,
    :math:`\mathrm{diag}(1/\sigma^2, 2)`). This is the exact expectation over actions,
    and equals the Hessian of the mean KL at the current parameters, without double
    backprop. ``per="step"`` averages over states (TRPO's matrix); ``per="trajectory"``
    expects a ``[N, T]`` batch shape, sums over time and averages over trajectories,
    the seed's trajectory Fisher with the expectation over actions taken exactly.

    Args:
      dist_fn: ``dist_fn(params, batch) -> distribution`` (a pytree such as
        :class:`npgjax.Categorical` or :class:`npgjax.DiagGaussian`).
      params: parameter pytree.
      batch: batch pytree.
      damping: :math:`\lambda \ge 0`.
      mask: optional mask of the distribution's batch shape (finite, >= 0).
      per: ``"step"`` or ``"trajectory"``.
      axis_name: inside ``shard_map``/``pmap``, the axis the batch is split over; the
        weights and the product are then means over the global batch.

    Returns:
      ``fvp(v)``.

    Raises:
      ValueError: if a batch leaf's leading axis differs from the distribution's
        (e.g. actions ``[1, D]`` next to ``N`` observations), or for a bad mask.

    Examples:
      >>> import jax.numpy as jnp
      >>> from npgjax import Categorical, analytic_fisher_vector_product
      >>> dist_fn = lambda w, x: Categorical(x @ w)
      >>> fvp = analytic_fisher_vector_product(dist_fn, jnp.zeros((1, 2)), jnp.ones((3, 1)))
      >>> fvp(jnp.array([[1.0, -1.0]]))
      Array([[ 0.5, -0.5]], dtype=float32)
    """
    check_positive(damping, "damping", allow_zero=True)
    check_axis_name(axis_name, "analytic_fisher_vector_product")
    at = vary(params, axis_name)
    dist0, jvp_fn = jax.linearize(lambda p: dist_fn(p, batch), at)
    vjp_fn = jax.linear_transpose(jvp_fn, at)
    bshape = _batch_shape(dist0)
    _check_batch_axis(batch, bshape)
    check_mask(mask, bshape, "analytic_fisher_vector_product")
    dtype = jnp.result_type(*jax.tree.leaves(dist0))
    w = _analytic_weights(bshape, mask, per, dtype, axis_name)

    def weigh(x: Array) -> Array:
        return x * w.reshape(bshape + (1,) * (x.ndim - len(bshape)))

    def fvp(v: PyTree) -> PyTree:
        check_same_structure(v, params, "v", "params")
        t = jvp_fn(vary(v, axis_name))
        ft = jax.tree.map(weigh, distribution_fisher_vector_product(dist0, t))
        (out,) = vjp_fn(ft)
        return tree_axpy(damping, v, axis_psum(out, axis_name))

    return fvp


# ---------------------------------------------------------------- factories


def empirical_fisher(
    log_prob_fn: LogProbFn, *, centered: bool = False, axis_name: AxisName = None
) -> FisherFn:
    """A Fisher factory ``(params, batch, mask=None) -> fvp`` for the empirical Fisher.

    Args:
      log_prob_fn: ``log_prob_fn(params, batch) -> [N]``.
      centered: subtract the mean score.
      axis_name: the device axis of the batch inside ``shard_map``/``pmap``.

    Returns:
      A factory for :func:`npgjax.precondition_by_fisher`'s ``fisher`` argument.

    Examples:
      >>> import jax.numpy as jnp
      >>> from npgjax import empirical_fisher
      >>> make = empirical_fisher(lambda w, x: x @ w)
      >>> make(jnp.zeros(2), jnp.eye(2))(jnp.ones(2))
      Array([0.5, 0.5], dtype=float32)
    """

    def make(params: PyTree, batch: PyTree, mask: Array | None = None) -> MatVec:
        return fisher_vector_product(
            log_prob_fn, params, batch, mask=mask, centered=centered, axis_name=axis_name
        )

    return make


def analytic_fisher(dist_fn: DistFn, *, per: str = "step", axis_name: AxisName = None) -> FisherFn:
    """A Fisher factory ``(params, batch, mask=None) -> fvp`` for the analytic Fisher.

    Args:
      dist_fn: ``dist_fn(params, batch) -> distribution``.
      per: ``"step"`` or ``"trajectory"``.
      axis_name: the device axis of the batch inside ``shard_map``/``pmap``.

    Returns:
      A factory for :func:`npgjax.precondition_by_fisher`'s ``fisher`` argument.

    Examples:
      >>> import jax.numpy as jnp
      >>> from npgjax import Categorical, analytic_fisher
      >>> make = analytic_fisher(lambda w, x: Categorical(x @ w))
      >>> make(jnp.zeros((1, 2)), jnp.ones((3, 1)))(jnp.array([[1.0, 0.0]]))
      Array([[ 0.25, -0.25]], dtype=float32)
    """
    if per not in ("step", "trajectory"):
        raise ValueError(f"per must be 'step' or 'trajectory', got {per!r}.")

    def make(params: PyTree, batch: PyTree, mask: Array | None = None) -> MatVec:
        return analytic_fisher_vector_product(
            dist_fn, params, batch, mask=mask, per=per, axis_name=axis_name
        )

    return make
