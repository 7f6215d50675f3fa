r"""optax transformations for natural gradients and trust-region steps.

``precondition_by_fisher`` maps a gradient ``g`` (of any policy-gradient loss) to the
natural gradient :math:`F^{-1} g`, optionally rescaled to a KL bound. It is an
:class:`optax.GradientTransformationExtraArgs`: the Fisher's data arrives through
``update(..., batch=...)``, and unknown keyword arguments are ignored, so it chains
with any optax transform.

Extra-argument names: ``batch`` (the data for the Fisher and the line search),
``fisher_batch`` (an optional different batch for the Fisher, e.g. a subsample) and
``fisher_mask`` (an optional sample mask). optax's own line searches pass *every*
extra argument to their ``value_fn`` and raise ``TypeError`` for one it does not take,
so when chaining with ``optax.scale_by_backtracking_linesearch`` give ``value_fn`` a
``batch`` argument (``value_fn(params, batch)``) and avoid the other two names, or
let it take ``**kwargs``.

The KL-measuring transforms (:func:`trust_region_line_search`, :func:`kl_guard`,
:func:`mean_kl`) live in :mod:`npgjax.trust_region` and the one-call optimizers
(:func:`npgjax.npg`, :func:`npgjax.trpo`) in :mod:`npgjax.optimizers`; the first are
re-exported here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from npgjax._checked_step import checked_step, hyper_status
from npgjax._solve import make_solve
from npgjax._tree import (
    AxisName,
    check_all_finite,
    check_axis_name,
    check_mask,
    check_positive,
    check_same_structure,
    check_state,
    is_concrete,
    tree_norm,
    tree_scale,
    tree_where,
    tree_zeros_like,
    varying_axes,
)
from npgjax.fisher import analytic_fisher, damped, empirical_fisher
from npgjax.status import ZERO_UPDATE_BITS
from npgjax.trust_region import (
    KLGuardState,
    TrustRegionLineSearchState,
    kl_guard,
    mean_kl,
    trust_region_line_search,
)

Array = jax.Array
PyTree = Any

__all__ = [
    "KLGuardState",
    "PreconditionByFisherState",
    "TrustRegionLineSearchState",
    "kl_guard",
    "mean_kl",
    "precondition_by_fisher",
    "trust_region_line_search",
]

class PreconditionByFisherState(NamedTuple):
    """Diagnostics of the last :func:`precondition_by_fisher` update.

    Attributes:
      count: number of updates so far.
      grad_dot_natgrad: :math:`g^\\top x` with :math:`x \\approx (F + \\lambda I)^{-1} g`
        the solver's answer (or the gradient fallback, see ``status``).
      predicted_kl: :math:`\\tfrac12 d^\\top F d` of the output ``d`` with the *undamped*
        Fisher, from one real Fisher-vector product of the final step, so it sees a solve
        spoiled by rounding. The step is scaled with the damped Fisher, so this is at most
        ``max_kl``.
      step_scale: the trust-region scale applied (1 when ``max_kl`` is None).
      cg_iterations: iterations used by the solver.
      cg_residual: relative residual :math:`\\|g - (F + \\lambda I) x\\| / \\|g\\|` of
        the solve.
      cosine: cosine between the natural and the vanilla gradient (>= 0 for a PSD F).
      skipped: True when a zero update was returned because of a problem (``status``
        says which); False for a zero gradient.
      status: :class:`npgjax.Status` bits; 0 for a clean update.
    """

    count: Array
    grad_dot_natgrad: Array
    predicted_kl: Array
    step_scale: Array
    cg_iterations: Array
    cg_residual: Array
    cosine: Array
    skipped: Array
    status: Array


def _init_state() -> PreconditionByFisherState:
    z = jnp.zeros((), jnp.float32)
    i = jnp.zeros((), jnp.int32)
    return PreconditionByFisherState(i, z, z, z, i, z, z, jnp.asarray(False), i)


def _check_global_gradient(updates: PyTree, axis_name: AxisName) -> None:
    check_axis_name(axis_name, "precondition_by_fisher")
    if axis_name is None:
        return
    names = set(axis_name) if isinstance(axis_name, (tuple, list)) else {axis_name}
    if any(names & varying_axes(x) for x in jax.tree.leaves(updates)):
        raise ValueError(
            f"precondition_by_fisher: the gradient varies over axis_name={axis_name!r}; "
            "pass the gradient of the global mean loss, e.g. jax.grad(lambda p: "
            "jax.lax.pmean(loss_fn(p, batch), axis_name))(params) inside shard_map."
        )


def _check_args(sources: tuple[Any, ...], max_kl: Any, damping: Any, cg_iters: Any,
                cg_tol: Any) -> None:
    """Raise ValueError for a bad construction of :func:`precondition_by_fisher`."""
    n = sum(x is not None for x in sources)
    if n != 1:
        raise ValueError(
            "precondition_by_fisher needs exactly one of log_prob_fn, dist_fn or fisher; "
            f"got {n}."
        )
    if max_kl is not None:
        check_positive(max_kl, "max_kl")
    check_positive(damping, "damping", allow_zero=True)
    check_positive(cg_tol, "cg_tol", allow_zero=True)
    if is_concrete(cg_iters) and int(cg_iters) < 1:
        raise ValueError(f"cg_iters must be at least 1, got {cg_iters}.")


def _next_state(state: PreconditionByFisherState, skipped: Array, status: Array, gx: Array,
                pred_kl: Array, scale: Array, cosine: Array, info: Any, gnorm: Array
                ) -> PreconditionByFisherState:
    """The state after an update: its diagnostics, zero where the update was skipped."""

    def keep(v: Array) -> Array:
        return jnp.where(skipped, 0.0, v).astype(jnp.float32)

    return PreconditionByFisherState(
        count=optax.safe_int32_increment(state.count),
        grad_dot_natgrad=keep(gx),
        predicted_kl=keep(pred_kl),
        step_scale=keep(scale),
        cg_iterations=jnp.asarray(info.iterations, jnp.int32),
        cg_residual=jnp.asarray(
            info.residual_norm / jnp.where(gnorm > 0, gnorm, 1.0), jnp.float32
        ),
        cosine=keep(cosine),
        skipped=skipped,
        status=status.astype(jnp.int32),
    )


def precondition_by_fisher(
    log_prob_fn: Callable[[PyTree, PyTree], Array] | None = None,
    *,
    dist_fn: Callable[[PyTree, PyTree], Any] | None = None,
    fisher: Callable[..., Callable[[PyTree], PyTree]] | None = None,
    max_kl: float | Array | None = None,
    damping: float | Array = 0.1,
    cg_iters: int = 10,
    cg_tol: float | None = None,
    solver: Callable[..., Any] | str | None = None,
    centered: bool = False,
    per: str = "step",
    chunk_size: int | None = None,
    axis_name: AxisName = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Precondition gradients by the inverse Fisher matrix (the natural gradient).

    .. math::
        x = (F + \lambda I)^{-1} g, \qquad
        d = \begin{cases} x & \texttt{max\_kl} = \text{None} \\
        \sqrt{2\epsilon / g^\top x}\; x & \text{otherwise} \end{cases}

    so that :math:`\tfrac12 d^\top F d = \epsilon` (the 1/2 convention; see
    :mod:`npgjax.steps`). The output points uphill like the gradient it received, so
    follow it with ``optax.scale(-1.0)`` (or ``-learning_rate``) to descend a loss.

    Exactly one Fisher source is given:

    * ``log_prob_fn(params, batch) -> [N]``: the empirical (score) Fisher;
    * ``dist_fn(params, batch) -> distribution``: the analytic Fisher;
    * ``fisher(params, batch, mask) -> fvp``: any custom operator factory.

    Bad input never reaches the parameters. Outside ``jit`` a NaN or inf in the
    gradient, a non-finite or non-positive ``max_kl``, a negative ``damping`` or
    ``fisher_mask`` weight raise ``ValueError``. Under ``jit`` (or with traced
    hyperparameters, e.g. a schedule or a ``vmap``) the update is zero,
    ``state.skipped`` is True and ``state.status`` says why (:class:`npgjax.Status`).

    If the solver returns :math:`g^\top x \le 0` for a non-zero gradient (rounding on
    an ill-conditioned Fisher), the step follows the gradient instead, sized as CG's
    first iterate and then KL-scaled (``status`` has ``GRADIENT_FALLBACK``); a
    non-zero gradient never gives a silent zero step. Each update costs one
    Fisher-vector product more than the solver: the product of the final direction,
    for the rescue, the scale check and ``predicted_kl``.

    Over several devices, as kfac-jax's ``pmap_axis_name``: inside ``jax.shard_map`` or
    ``jax.pmap`` with the batch split over ``axis_name``, every mean over samples (the
    Fisher products, the mask sum, the centred mean score) is global, so the step equals
    the single-device step on the concatenated batch. The gradient is the caller's and
    must already be global (the same on every device): under ``shard_map``,
    ``jax.grad(lambda p: jax.lax.pmean(loss_fn(p, batch), axis_name))(params)``; under
    ``pmap``, ``jax.lax.pmean(jax.grad(loss_fn)(params, batch), axis_name)``. The scalars
    computed from it (:math:`g^\top x`, the scale, ``predicted_kl``) then need no
    reduction. A custom ``fisher`` factory must reduce over the devices itself. Under
    plain ``jax.jit`` with a ``NamedSharding`` batch, use ``axis_name=None``.

    Args:
      log_prob_fn: per-sample log-probabilities, for the empirical Fisher.
      dist_fn: the policy's distribution, for the analytic Fisher.
      fisher: a custom Fisher factory (see :func:`npgjax.empirical_fisher`).
      max_kl: optional KL bound :math:`\epsilon > 0` for a trust-region step.
      damping: :math:`\lambda \ge 0` added to the Fisher (0.1, as in :func:`npgjax.trpo`
        and sb3-contrib).
      cg_iters: conjugate-gradient iterations (ignored if ``solver`` is given).
      cg_tol: conjugate-gradient relative tolerance (ignored if ``solver`` is given);
        None for ``10 * eps`` of the gradient's dtype, ``0`` for exactly ``cg_iters``.
      solver: None or ``"cg"`` for conjugate gradients; ``"sample_space"`` for the
        exact solve through the ``N x N`` Gram matrix of the scores
        (:func:`npgjax.sample_space_natural_gradient`, needs ``log_prob_fn``; best when
        the ``N`` samples are far fewer than the parameters, e.g. a trajectory Fisher);
        or any ``solver(matvec, b) -> (x, SolveInfo)``, e.g.
        :func:`npgjax.cholesky_solve`.
      centered: centre the empirical Fisher.
      per: ``"step"`` or ``"trajectory"`` for the analytic Fisher.
      chunk_size: samples per chunk of the score matrix for ``solver="sample_space"``.
      axis_name: the ``shard_map``/``pmap`` axis the batch is split over (None: one
        device, or ``jit`` with sharded inputs).

    Returns:
      An :class:`optax.GradientTransformationExtraArgs` whose ``update`` takes
      ``params`` and ``batch=`` (and optionally ``fisher_batch=``, ``fisher_mask=``).

    Raises:
      ValueError: for a bad argument as above, a missing ``params`` or ``batch=``,
        mismatched pytrees, ``update`` called without ``init``'s state, an
        ``axis_name`` not bound by ``shard_map``/``pmap``, or a gradient that varies over
        it.

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> import npgjax
      >>> log_prob_fn = lambda w, b: npgjax.Categorical(b["obs"] @ w).log_prob(b["act"])
      >>> batch = {"obs": jnp.eye(3), "act": jnp.array([0, 1, 2])}
      >>> w = jnp.zeros((3, 3))
      >>> tx = optax.chain(npgjax.precondition_by_fisher(log_prob_fn, max_kl=0.01, damping=1e-3),
      ...                  optax.scale(-1.0))
      >>> state = tx.init(w)
      >>> g = jax.grad(lambda w: -log_prob_fn(w, batch).mean())(w)
      >>> updates, state = tx.update(g, state, w, batch=batch)
      >>> round(float(state[0].predicted_kl), 3), int(state[0].status)
      (0.01, 0)

    References:
      Kakade, *A Natural Policy Gradient*, NeurIPS 2001.
      Schulman et al., *Trust Region Policy Optimization*, ICML 2015.
    """
    _check_args((log_prob_fn, dist_fn, fisher), max_kl, damping, cg_iters, cg_tol)
    if log_prob_fn is not None:
        make_fisher = empirical_fisher(log_prob_fn, centered=centered, axis_name=axis_name)
    elif dist_fn is not None:
        make_fisher = analytic_fisher(dist_fn, per=per, axis_name=axis_name)
    else:
        make_fisher = fisher
    solve = make_solve(solver, log_prob_fn, cg_iters, cg_tol, centered, chunk_size, axis_name)

    def init_fn(params: PyTree) -> PreconditionByFisherState:
        del params
        return _init_state()

    def update_fn(
        updates: PyTree,
        state: PreconditionByFisherState,
        params: PyTree | None = None,
        *,
        batch: PyTree | None = None,
        fisher_batch: PyTree | None = None,
        fisher_mask: Array | None = None,
        **extra_args: Any,
    ) -> tuple[PyTree, PreconditionByFisherState]:
        del extra_args
        check_state(state, PreconditionByFisherState, "precondition_by_fisher")
        if params is None:
            raise ValueError("precondition_by_fisher: update needs params (the current policy).")
        data = batch if fisher_batch is None else fisher_batch
        if data is None:
            raise ValueError(
                "precondition_by_fisher: pass the Fisher's data as update(..., batch=batch) "
                "or fisher_batch=..."
            )
        check_same_structure(updates, params, "updates", "params")
        check_all_finite(updates, "the gradient")
        _check_global_gradient(updates, axis_name)
        if fisher_mask is not None:
            check_mask(fisher_mask, jnp.shape(fisher_mask), "precondition_by_fisher")
        matvec = damped(make_fisher(params, data, fisher_mask), damping)
        x, info = solve(matvec, updates, params, data, fisher_mask, damping)
        x, scale, gx, pred_kl, cosine, status = checked_step(
            matvec, updates, x, info, max_kl, damping
        )
        status = status | hyper_status(max_kl, damping, fisher_mask, axis_name)
        skipped = (status & ZERO_UPDATE_BITS) != 0
        out = tree_where(skipped, tree_zeros_like(updates), tree_scale(scale, x))
        return out, _next_state(state, skipped, status, gx, pred_kl, scale, cosine, info,
                                tree_norm(updates))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
