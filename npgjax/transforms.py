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
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from npgjax._tree import (
    check_positive,
    check_same_structure,
    is_concrete,
    tree_all_finite,
    tree_norm,
    tree_scale,
    tree_vdot,
    tree_where,
    tree_zeros_like,
)
from npgjax.fisher import analytic_fisher, damped, empirical_fisher
from npgjax.solvers import conjugate_gradient
from npgjax.steps import backtracking_line_search, trust_region_scale

Array = jax.Array
PyTree = Any

__all__ = [
    "PreconditionByFisherState",
    "TrustRegionLineSearchState",
    "mean_kl",
    "npg",
    "precondition_by_fisher",
    "trpo",
    "trust_region_line_search",
]


class PreconditionByFisherState(NamedTuple):
    """Diagnostics of the last :func:`precondition_by_fisher` update.

    Attributes:
      count: number of updates so far.
      grad_dot_natgrad: :math:`g^\\top F^{-1} g` (with the damped Fisher).
      predicted_kl: :math:`\\tfrac12 d^\\top F d` of the output ``d`` with the *undamped*
        Fisher (the KL-scaled step, or the unit natural-gradient step when ``max_kl`` is
        None). The step is scaled with the damped Fisher, so this is at most ``max_kl``.
      step_scale: the trust-region scale applied (1 when ``max_kl`` is None).
      cg_iterations: iterations used by the solver.
      cg_residual: relative residual :math:`\\|g - (F + \\lambda I) x\\| / \\|g\\|` of
        the solve.
      cosine: cosine between the natural and the vanilla gradient (>= 0 for a PSD F).
      skipped: True when the solve was not finite and a zero update was returned.
    """

    count: Array
    grad_dot_natgrad: Array
    predicted_kl: Array
    step_scale: Array
    cg_iterations: Array
    cg_residual: Array
    cosine: Array
    skipped: Array


def _init_state() -> PreconditionByFisherState:
    z = jnp.zeros((), jnp.float32)
    return PreconditionByFisherState(
        jnp.zeros((), jnp.int32), z, z, z, jnp.zeros((), jnp.int32), z, z, jnp.asarray(False)
    )


def _check_no_nan(tree: PyTree, name: str) -> None:
    for path, x in jax.tree_util.tree_leaves_with_path(tree):
        if (
            is_concrete(x)
            and jnp.issubdtype(jnp.result_type(x), jnp.inexact)
            and not bool(jnp.all(jnp.isfinite(jnp.asarray(x))))
        ):
            raise ValueError(f"{name} has a NaN or infinite value at {jax.tree_util.keystr(path)}.")


def precondition_by_fisher(
    log_prob_fn: Callable[[PyTree, PyTree], Array] | None = None,
    *,
    dist_fn: Callable[[PyTree, PyTree], Any] | None = None,
    fisher: Callable[..., Callable[[PyTree], PyTree]] | None = None,
    max_kl: float | Array | None = None,
    damping: float | Array = 1e-3,
    cg_iters: int = 10,
    cg_tol: float = 1e-10,
    solver: Callable[..., Any] | None = None,
    centered: bool = False,
    per: str = "step",
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

    If the solve is not finite the update is zero and ``state.skipped`` is True, so a bad
    batch under ``jit`` never writes NaN into the parameters; outside ``jit`` a NaN in the
    gradient raises ``ValueError``.

    Args:
      log_prob_fn: per-sample log-probabilities, for the empirical Fisher.
      dist_fn: the policy's distribution, for the analytic Fisher.
      fisher: a custom Fisher factory (see :func:`npgjax.empirical_fisher`).
      max_kl: optional KL bound :math:`\epsilon > 0` for a trust-region step.
      damping: :math:`\lambda \ge 0` added to the Fisher.
      cg_iters: conjugate-gradient iterations (ignored if ``solver`` is given).
      cg_tol: conjugate-gradient relative tolerance (ignored if ``solver`` is given).
      solver: optional ``solver(matvec, b) -> (x, SolveInfo)``, e.g.
        :func:`npgjax.cholesky_solve`.
      centered: centre the empirical Fisher.
      per: ``"step"`` or ``"trajectory"`` for the analytic Fisher.

    Returns:
      An :class:`optax.GradientTransformationExtraArgs` whose ``update`` takes
      ``params`` and ``batch=`` (and optionally ``fisher_batch=``, ``fisher_mask=``).

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> import npgjax
      >>> log_prob_fn = lambda w, b: npgjax.Categorical(b["obs"] @ w).log_prob(b["act"])
      >>> batch = {"obs": jnp.eye(3), "act": jnp.array([0, 1, 2])}
      >>> w = jnp.zeros((3, 3))
      >>> tx = optax.chain(npgjax.precondition_by_fisher(log_prob_fn, max_kl=0.01),
      ...                  optax.scale(-1.0))
      >>> state = tx.init(w)
      >>> g = jax.grad(lambda w: -log_prob_fn(w, batch).mean())(w)
      >>> updates, state = tx.update(g, state, w, batch=batch)
      >>> round(float(state[0].predicted_kl), 3)
      0.01

    References:
      Kakade, *A Natural Policy Gradient*, NeurIPS 2001.
      Schulman et al., *Trust Region Policy Optimization*, ICML 2015.
    """
    sources = [x is not None for x in (log_prob_fn, dist_fn, fisher)]
    if sum(sources) != 1:
        raise ValueError(
            "precondition_by_fisher needs exactly one of log_prob_fn, dist_fn or fisher; "
            f"got {sum(sources)}."
        )
    if max_kl is not None:
        check_positive(max_kl, "max_kl")
    check_positive(damping, "damping", allow_zero=True)
    if is_concrete(cg_iters) and int(cg_iters) < 1:
        raise ValueError(f"cg_iters must be at least 1, got {cg_iters}.")
    if log_prob_fn is not None:
        make_fisher = empirical_fisher(log_prob_fn, centered=centered)
    elif dist_fn is not None:
        make_fisher = analytic_fisher(dist_fn, per=per)
    else:
        make_fisher = fisher
    solve = solver or functools.partial(conjugate_gradient, max_iters=cg_iters, tol=cg_tol)

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
        if params is None:
            raise ValueError("precondition_by_fisher: update needs params (the current policy).")
        data = batch if fisher_batch is None else fisher_batch
        if data is None:
            raise ValueError(
                "precondition_by_fisher: pass the Fisher's data as update(..., batch=batch) "
                "or fisher_batch=..."
            )
        check_same_structure(updates, params, "updates", "params")
        _check_no_nan(updates, "the gradient")
        matvec = damped(make_fisher(params, data, fisher_mask), damping)
        x, info = solve(matvec, updates)
        gx = tree_vdot(updates, x)
        gnorm, xnorm = tree_norm(updates), tree_norm(x)
        denom = gnorm * xnorm
        cosine = jnp.where(denom > 0, gx / jnp.where(denom > 0, denom, 1.0), 0.0)
        scale = jnp.ones((), gx.dtype) if max_kl is None else trust_region_scale(gx, max_kl)
        # x^T (F + lambda I) x = g^T x for CG from zero, so the undamped model is free.
        xfx = jnp.maximum(gx - damping * xnorm**2, 0.0)
        pred_kl = 0.5 * scale**2 * xfx
        finite = tree_all_finite(x) & jnp.isfinite(gx) & jnp.isfinite(info.residual_norm)
        out = tree_where(finite, tree_scale(scale, x), tree_zeros_like(updates))
        new_state = PreconditionByFisherState(
            count=optax.safe_int32_increment(state.count),
            grad_dot_natgrad=jnp.where(finite, gx, 0.0).astype(jnp.float32),
            predicted_kl=jnp.where(finite, pred_kl, 0.0).astype(jnp.float32),
            step_scale=jnp.where(finite, scale, 0.0).astype(jnp.float32),
            cg_iterations=jnp.asarray(info.iterations, jnp.int32),
            cg_residual=jnp.asarray(
                info.residual_norm / jnp.where(gnorm > 0, gnorm, 1.0), jnp.float32
            ),
            cosine=jnp.where(finite, cosine, 0.0).astype(jnp.float32),
            skipped=~finite,
        )
        return out, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class TrustRegionLineSearchState(NamedTuple):
    """Diagnostics of the last :func:`trust_region_line_search` update.

    Attributes:
      tries: candidates evaluated.
      accepted: whether a step was accepted.
      step_fraction: accepted fraction of the proposed step.
      kl: measured KL of the accepted step.
      improvement: decrease of the loss.
    """

    tries: Array
    accepted: Array
    step_fraction: Array
    kl: Array
    improvement: Array


def mean_kl(dist_fn: Callable[[PyTree, PyTree], Any]) -> Callable[[PyTree, PyTree, PyTree], Array]:
    """``kl_fn(new_params, old_params, batch)``: mean KL(old || new) over the batch.

    Args:
      dist_fn: ``dist_fn(params, batch) -> distribution`` with a ``kl`` method.

    Returns:
      The KL function for :func:`trust_region_line_search`.

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
        return jnp.mean(kl(new))

    return kl_fn


def trust_region_line_search(
    loss_fn: Callable[[PyTree, PyTree], Array],
    kl_fn: Callable[[PyTree, PyTree, PyTree], Array],
    *,
    max_kl: float | Array,
    shrink: float = 0.8,
    max_tries: int = 10,
) -> optax.GradientTransformationExtraArgs:
    r"""TRPO's backtracking line search as an optax transform.

    Place it last in a chain, after the step has its final sign and size. Given the
    proposed update ``d`` it returns :math:`c^k d` for the first ``k`` whose measured KL
    ``kl_fn(params + c^k d, params, batch)`` is at most ``max_kl`` and whose loss
    ``loss_fn(params + c^k d, batch)`` is below ``loss_fn(params, batch)``; a zero update
    if no try passes (the old parameters are kept).

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar`` to be minimised.
      kl_fn: ``kl_fn(new_params, old_params, batch) -> scalar`` (see :func:`mean_kl`).
      max_kl: the KL bound.
      shrink: backtracking factor in ``(0, 1)``.
      max_tries: maximum number of candidates.

    Returns:
      An :class:`optax.GradientTransformationExtraArgs` with a
      :class:`TrustRegionLineSearchState`.

    Examples:
      >>> import jax.numpy as jnp, optax
      >>> from npgjax import trust_region_line_search
      >>> ls = trust_region_line_search(lambda p, b: jnp.sum((p - b) ** 2),
      ...                               lambda q, p, b: 0.5 * jnp.sum((q - p) ** 2),
      ...                               max_kl=0.1, shrink=0.5)
      >>> u, s = ls.update(jnp.ones(1), ls.init(jnp.zeros(1)), jnp.zeros(1),
      ...                  batch=jnp.ones(1))
      >>> u, int(s.tries)
      (Array([0.25], dtype=float32), 3)

    References:
      Schulman et al., *Trust Region Policy Optimization*, ICML 2015, appendix C.
    """
    check_positive(max_kl, "max_kl")

    def init_fn(params: PyTree) -> TrustRegionLineSearchState:
        del params
        z = jnp.zeros((), jnp.float32)
        return TrustRegionLineSearchState(jnp.zeros((), jnp.int32), jnp.asarray(False), z, z, z)

    def update_fn(updates, state, params=None, *, batch=None, **extra_args):
        del state, extra_args
        if params is None or batch is None:
            raise ValueError("trust_region_line_search: update needs params and batch=.")
        check_same_structure(updates, params, "updates", "params")
        _, info = backtracking_line_search(
            lambda p: loss_fn(p, batch),
            lambda q: kl_fn(q, params, batch),
            params,
            updates,
            max_kl=max_kl,
            shrink=shrink,
            max_tries=max_tries,
        )
        new_state = TrustRegionLineSearchState(
            info.tries,
            info.accepted,
            info.step_fraction.astype(jnp.float32),
            info.kl.astype(jnp.float32),
            info.improvement.astype(jnp.float32),
        )
        return tree_scale(info.step_fraction, updates), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def npg(
    log_prob_fn: Callable[[PyTree, PyTree], Array] | None = None,
    *,
    dist_fn: Callable[[PyTree, PyTree], Any] | None = None,
    max_kl: float | None = None,
    learning_rate: float | None = None,
    damping: float = 1e-3,
    cg_iters: int = 10,
    cg_tol: float = 1e-10,
    centered: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""Natural policy gradient optimizer, in the manner of ``optax.adam``.

    ``chain(precondition_by_fisher(...), scale(-1))`` with a KL-normalised step when
    ``max_kl`` is set, or ``chain(precondition_by_fisher(max_kl=None),
    scale(-learning_rate))`` for a fixed step size along the natural gradient. Feed it
    the gradient of a loss to minimise (e.g. :func:`npgjax.surrogate_loss`).

    .. math:: \theta \leftarrow \theta - \sqrt{2\epsilon / g^\top F^{-1} g}\, F^{-1} g

    Args:
      log_prob_fn: per-sample log-probabilities (empirical Fisher).
      dist_fn: distribution function (analytic Fisher), instead of ``log_prob_fn``.
      max_kl: KL bound of each step (0.01 when neither it nor ``learning_rate`` is
        given); must be None when ``learning_rate`` is given.
      learning_rate: fixed step size along the natural gradient.
      damping: Fisher damping.
      cg_iters: conjugate-gradient iterations.
      cg_tol: conjugate-gradient tolerance.
      centered: centre the empirical Fisher.

    Returns:
      An :class:`optax.GradientTransformationExtraArgs`; call ``update(grads, state,
      params, batch=batch)``.

    Examples:
      >>> import jax, jax.numpy as jnp, optax, npgjax
      >>> log_prob_fn = lambda w, b: npgjax.Categorical(b["obs"] @ w).log_prob(b["act"])
      >>> batch = {"obs": jnp.eye(3), "act": jnp.array([0, 1, 2])}
      >>> w = jnp.zeros((3, 3))
      >>> tx = npgjax.npg(log_prob_fn, max_kl=0.01)
      >>> g = jax.grad(lambda w: -log_prob_fn(w, batch).mean())(w)
      >>> updates, state = tx.update(g, tx.init(w), w, batch=batch)
      >>> w = optax.apply_updates(w, updates)

    References:
      Kakade, *A Natural Policy Gradient*, NeurIPS 2001.
      Rajeswaran et al., *Towards Generalization and Simplicity in Continuous Control*,
      NeurIPS 2017.
    """
    if learning_rate is not None and max_kl is not None:
        raise ValueError("npg: give either max_kl (KL-normalised step) or learning_rate, not both.")
    if learning_rate is None and max_kl is None:
        max_kl = 0.01
    pre = precondition_by_fisher(
        log_prob_fn,
        dist_fn=dist_fn,
        max_kl=max_kl,
        damping=damping,
        cg_iters=cg_iters,
        cg_tol=cg_tol,
        centered=centered,
    )
    lr = 1.0 if learning_rate is None else learning_rate
    return optax.chain(pre, optax.scale(-lr))


def trpo(
    dist_fn: Callable[[PyTree, PyTree], Any],
    loss_fn: Callable[[PyTree, PyTree], Array],
    *,
    max_kl: float = 0.01,
    damping: float = 0.1,
    cg_iters: int = 15,
    cg_tol: float = 1e-10,
    shrink: float = 0.8,
    max_tries: int = 10,
) -> optax.GradientTransformationExtraArgs:
    r"""Trust Region Policy Optimization as one optax optimizer.

    ``chain(precondition_by_fisher(dist_fn=..., max_kl), scale(-1),
    trust_region_line_search(loss_fn, mean_kl(dist_fn), max_kl))``: the analytic
    Fisher (the KL Hessian), a KL-scaled natural step, then backtracking until the
    measured KL is at most ``max_kl`` and the loss improves.

    Args:
      dist_fn: ``dist_fn(params, batch) -> distribution``.
      loss_fn: ``loss_fn(params, batch) -> scalar`` surrogate loss to minimise.
      max_kl: KL bound.
      damping: Fisher damping (sb3-contrib's default is 0.1).
      cg_iters: conjugate-gradient iterations (sb3-contrib's default is 15).
      cg_tol: conjugate-gradient tolerance.
      shrink: line-search factor.
      max_tries: line-search tries.

    Returns:
      An :class:`optax.GradientTransformationExtraArgs`; call ``update(grads, state,
      params, batch=batch)`` with ``grads = jax.grad(loss_fn)(params, batch)``.

    Examples:
      >>> import jax, jax.numpy as jnp, optax, npgjax
      >>> dist_fn = lambda w, b: npgjax.Categorical(b["obs"] @ w)
      >>> loss_fn = lambda w, b: -dist_fn(w, b).log_prob(b["act"]).mean()
      >>> batch = {"obs": jnp.eye(3), "act": jnp.array([0, 1, 2])}
      >>> w = jnp.zeros((3, 3))
      >>> tx = npgjax.trpo(dist_fn, loss_fn, max_kl=0.01)
      >>> updates, state = tx.update(jax.grad(loss_fn)(w, batch), tx.init(w), w, batch=batch)
      >>> bool(state[2].accepted)
      True

    References:
      Schulman et al., *Trust Region Policy Optimization*, ICML 2015.
    """
    return optax.chain(
        precondition_by_fisher(
            dist_fn=dist_fn, max_kl=max_kl, damping=damping, cg_iters=cg_iters, cg_tol=cg_tol
        ),
        optax.scale(-1.0),
        trust_region_line_search(
            loss_fn, mean_kl(dist_fn), max_kl=max_kl, shrink=shrink, max_tries=max_tries
        ),
    )
