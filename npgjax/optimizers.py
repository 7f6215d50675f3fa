r"""One-call optimizers, in the manner of ``optax.adam``: :func:`npg` and :func:`trpo`.

Each is an ``optax.chain`` of the building blocks in :mod:`npgjax.transforms`, so its
state is the chain's tuple (``state[0]`` the preconditioner's, ``state[2]`` TRPO's line
search or NPG's KL guard); :func:`npgjax.diagnostics` reads them by name. Both default
to ``damping=0.1`` (sb3-contrib's TRPO value): a damping far below the Fisher's scale
lets a fixed-``learning_rate`` NPG step follow directions of tiny curvature and diverge.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax

from npgjax.transforms import precondition_by_fisher
from npgjax.trust_region import kl_guard, mean_kl, trust_region_line_search

Array = jax.Array
PyTree = Any

__all__ = ["npg", "trpo"]


def _checked_chain(name: str, *parts: Any) -> optax.GradientTransformationExtraArgs:
    """``optax.chain`` whose ``update`` names a missing ``init`` instead of a len() error."""
    inner = optax.chain(*parts)

    def update_fn(updates, state, params=None, **extra_args):
        if not isinstance(state, tuple) or len(state) != len(parts):
            raise ValueError(
                f"{name}: update got a state of type {type(state).__name__}, not the "
                f"{len(parts)}-tuple that init returns; call state = tx.init(params) first "
                "and pass it to tx.update."
            )
        return inner.update(updates, state, params, **extra_args)

    return optax.GradientTransformationExtraArgs(inner.init, update_fn)


def npg(
    log_prob_fn: Callable[[PyTree, PyTree], Array] | None = None,
    *,
    dist_fn: Callable[[PyTree, PyTree], Any] | None = None,
    max_kl: float | None = None,
    learning_rate: float | None = None,
    damping: float = 0.1,
    cg_iters: int = 10,
    cg_tol: float | None = None,
    centered: bool = False,
    solver: str | Callable[..., Any] | None = None,
    kl_fn: Callable[[PyTree, PyTree, PyTree], Array] | None = None,
    max_kl_factor: float | None = None,
    axis_name: Any = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Natural policy gradient optimizer, in the manner of ``optax.adam``.

    ``chain(precondition_by_fisher(...), scale(-1))`` with a KL-normalised step when
    ``max_kl`` is set, or ``chain(precondition_by_fisher(max_kl=None),
    scale(-learning_rate))`` for a fixed step size along the natural gradient. Feed it
    the gradient of a loss to minimise (e.g. :func:`npgjax.surrogate_loss`).

    .. math:: \theta \leftarrow \theta - \sqrt{2\epsilon / g^\top F^{-1} g}\, F^{-1} g

    The step's KL is that of the quadratic model; where the model is poor the real KL
    can be far larger. The opt-in KL guard (``kl_fn`` or ``max_kl_factor``) appends
    :func:`npgjax.kl_guard`: it measures the KL of the step and halves the step until
    it is at most ``max_kl_factor * max_kl`` (default factor 1.5), reporting the
    measured KL in ``state[2].kl``. It costs one policy evaluation per try.

    Args:
      log_prob_fn: per-sample log-probabilities (empirical Fisher).
      dist_fn: distribution function (analytic Fisher), instead of ``log_prob_fn``.
      max_kl: KL bound of each step (0.01 when neither it nor ``learning_rate`` is
        given); must be None when ``learning_rate`` is given.
      learning_rate: fixed step size along the natural gradient.
      damping: Fisher damping (0.1, as in :func:`trpo`).
      cg_iters: conjugate-gradient iterations.
      cg_tol: conjugate-gradient tolerance (None: ``10 * eps`` of the dtype).
      centered: centre the empirical Fisher.
      solver: ``"cg"`` (default), ``"sample_space"`` (exact, through the ``N x N`` Gram
        matrix; needs ``log_prob_fn``) or a callable (see :func:`precondition_by_fisher`).
      kl_fn: ``kl_fn(new_params, old_params, batch) -> scalar`` for the KL guard
        (default :func:`npgjax.mean_kl` of ``dist_fn`` when ``max_kl_factor`` is given).
      max_kl_factor: the guard's tolerance factor (1.5 when only ``kl_fn`` is given).
      axis_name: inside ``shard_map``/``pmap``, the axis the batch is split over (see
        :func:`precondition_by_fisher`); the gradient passed to ``update`` must be global.

    Returns:
      An :class:`optax.GradientTransformationExtraArgs`; call ``update(grads, state,
      params, batch=batch)``.

    Raises:
      ValueError: for ``max_kl`` together with ``learning_rate``, a KL guard without
        ``max_kl`` or without a way to measure the KL, or a bad hyperparameter.

    Examples:
      >>> import jax, jax.numpy as jnp, optax, npgjax
      >>> log_prob_fn = lambda w, b: npgjax.Categorical(b["obs"] @ w).log_prob(b["act"])
      >>> batch = {"obs": jnp.eye(3), "act": jnp.array([0, 1, 2])}
      >>> w = jnp.zeros((3, 3))
      >>> tx = npgjax.npg(log_prob_fn, max_kl=0.01)
      >>> g = jax.grad(lambda w: -log_prob_fn(w, batch).mean())(w)
      >>> updates, state = tx.update(g, tx.init(w), w, batch=batch)
      >>> w = optax.apply_updates(w, updates)

      With the KL guard:

      >>> dist_fn = lambda w, b: npgjax.Categorical(b["obs"] @ w)
      >>> tx = npgjax.npg(dist_fn=dist_fn, max_kl=0.01, max_kl_factor=1.5)
      >>> updates, state = tx.update(g, tx.init(w), w, batch=batch)
      >>> float(npgjax.diagnostics(state)["guard_kl"]) <= 0.015
      True

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
        solver=solver,
        axis_name=axis_name,
    )
    lr = 1.0 if learning_rate is None else learning_rate
    parts = [pre, optax.scale(-lr)]
    if kl_fn is not None or max_kl_factor is not None:
        if max_kl is None:
            raise ValueError("npg: the KL guard (kl_fn, max_kl_factor) needs max_kl.")
        if kl_fn is None:
            if dist_fn is None:
                raise ValueError(
                    "npg: the KL guard needs kl_fn(new_params, old_params, batch), or "
                    "dist_fn to measure the mean KL with."
                )
            kl_fn = mean_kl(dist_fn)
        factor = 1.5 if max_kl_factor is None else max_kl_factor
        parts.append(kl_guard(kl_fn, max_kl=max_kl, max_kl_factor=factor, axis_name=axis_name))
    return _checked_chain("npg", *parts)


def trpo(
    dist_fn: Callable[[PyTree, PyTree], Any],
    loss_fn: Callable[[PyTree, PyTree], Array],
    *,
    max_kl: float = 0.01,
    damping: float = 0.1,
    cg_iters: int = 15,
    cg_tol: float | None = None,
    shrink: float = 0.8,
    max_tries: int = 10,
    axis_name: Any = None,
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
      cg_tol: conjugate-gradient tolerance (None: ``10 * eps`` of the dtype).
      shrink: line-search factor.
      max_tries: line-search tries.
      axis_name: inside ``shard_map``/``pmap``, the axis the batch is split over: the
        Fisher products and the line search's surrogate and KL are then means over the
        global batch, and ``grads`` must be the global gradient, e.g.
        ``jax.grad(lambda p: jax.lax.pmean(loss_fn(p, batch), axis_name))(params)``.

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
    return _checked_chain(
        "trpo",
        precondition_by_fisher(
            dist_fn=dist_fn, max_kl=max_kl, damping=damping, cg_iters=cg_iters, cg_tol=cg_tol,
            axis_name=axis_name,
        ),
        optax.scale(-1.0),
        trust_region_line_search(
            loss_fn, mean_kl(dist_fn), max_kl=max_kl, shrink=shrink, max_tries=max_tries,
            axis_name=axis_name,
        ),
    )
