"""The natural-gradient step shared by NPG, TRPO and eNAC: one optax chain, built once.

``precondition_by_fisher`` (and for TRPO the line search) in an
``optax.inject_hyperparams`` chain whose ``max_kl`` and ``damping`` are set from the
traced hyperparameters at each update; the diagnostics are read by name.
"""

from __future__ import annotations

from typing import Any

import jax
import optax

from npgjax.rl.algos.base import nan_diagnostics
from npgjax.transforms import mean_kl, precondition_by_fisher, trust_region_line_search

Array = jax.Array
PyTree = Any

__all__ = ["natural_chain", "natural_diagnostics", "set_hyperparams"]


def natural_chain(
    fisher_source: dict[str, Any],
    *,
    max_kl: float,
    damping: float,
    cg_iters: int,
    centered: bool = False,
    solver: str = "cg",
    line_search: dict[str, Any] | None = None,
) -> optax.GradientTransformationExtraArgs:
    """``chain(precondition_by_fisher, scale(-1)[, trust_region_line_search])``.

    Args:
      fisher_source: ``{"dist_fn": ...}`` or ``{"log_prob_fn": ...}``.
      max_kl, damping: initial values of the injected hyperparameters.
      cg_iters: CG iterations (CG runs them all: ``cg_tol=0``).
      centered: centre the scores (eNAC).
      solver: ``"cg"`` or ``"sample_space"`` (see :func:`npgjax.precondition_by_fisher`).
      line_search: ``{"loss_fn", "dist_fn", "shrink", "max_tries"}`` for TRPO's search.
    """

    def chain(max_kl: Array, damping: Array) -> optax.GradientTransformationExtraArgs:
        parts = [
            precondition_by_fisher(**fisher_source, max_kl=max_kl, damping=damping,
                                   cg_iters=cg_iters, cg_tol=0.0, centered=centered,
                                   solver=solver),
            optax.scale(-1.0),
        ]
        if line_search is not None:
            ls = line_search
            parts.append(trust_region_line_search(
                ls["loss_fn"], mean_kl(ls["dist_fn"]), max_kl=max_kl, shrink=ls["shrink"],
                max_tries=ls["max_tries"]))
        return optax.chain(*parts)

    return optax.inject_hyperparams(chain)(max_kl=max_kl, damping=damping)


def set_hyperparams(state: Any, **values: Array) -> Any:
    """An ``inject_hyperparams`` state with some hyperparameters replaced."""
    hp = dict(state.hyperparams)
    for k, v in values.items():
        hp[k] = jax.numpy.asarray(v, hp[k].dtype)
    return state._replace(hyperparams=hp)


def natural_diagnostics(state: Any) -> dict[str, Array]:
    """The preconditioner's (and line search's) diagnostics, found by name in the state."""
    get = optax.tree_utils.tree_get
    known = {"max_kl": state.hyperparams["max_kl"]}
    for name in ("predicted_kl", "cg_iterations", "cg_residual", "cosine"):
        known[name] = get(state, name)
    tries = get(state, "tries", None)
    if tries is not None:
        known.update(ls_tries=tries, ls_accepted=get(state, "accepted"))
    return nan_diagnostics(**known)
