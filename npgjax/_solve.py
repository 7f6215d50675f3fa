"""Which solver :func:`npgjax.precondition_by_fisher` runs: CG on the damped Fisher, the
exact sample-space solve, or the user's ``solver(matvec, b)``."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from npgjax.sample_space import sample_space_natural_gradient
from npgjax.solvers import conjugate_gradient

__all__: list[str] = []  # internal


def make_solve(solver: Any, log_prob_fn: Callable[..., Any] | None, cg_iters: Any,
               cg_tol: Any, centered: bool, chunk_size: int | None, axis_name: Any
               ) -> Callable[..., Any]:
    """``solve(matvec, g, params, data, mask, damping) -> (x, SolveInfo)`` for
    :func:`npgjax.precondition_by_fisher`'s ``solver`` argument (see there)."""
    if solver is None or solver == "cg":
        solver = functools.partial(conjugate_gradient, max_iters=cg_iters, tol=cg_tol)
    elif solver == "sample_space":
        if log_prob_fn is None:
            raise ValueError(
                "precondition_by_fisher: solver='sample_space' needs log_prob_fn (per-sample "
                "log-probabilities); a dist_fn or custom fisher source has no scores to solve with."
            )

        def exact(matvec, g, params, data, mask, damping):
            del matvec
            return sample_space_natural_gradient(
                log_prob_fn, params, data, g, damping=damping, centered=centered,
                chunk_size=chunk_size, mask=mask, axis_name=axis_name)

        return exact
    elif isinstance(solver, str):
        raise ValueError(
            f"precondition_by_fisher: unknown solver {solver!r}; use 'cg', 'sample_space' or "
            "a callable solver(matvec, b)."
        )
    if chunk_size is not None:
        raise ValueError(
            "precondition_by_fisher: chunk_size is only used by solver='sample_space'.")
    return lambda matvec, g, *_: solver(matvec, g)
