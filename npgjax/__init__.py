"""npgjax: natural policy gradients, Fisher-vector products and trust-region steps in JAX.

The layers follow the data flow: log-probs -> scores -> Fisher operator -> solver ->
step rule -> optax transform -> RL loop (:mod:`npgjax.rl`, imported on demand).
"""

from typing import TYPE_CHECKING as _TYPE_CHECKING

from npgjax._version import __version__ as __version__

if _TYPE_CHECKING:  # for type checkers and the docs; at run time each name loads on use
    from npgjax._tree import materialize, tree_vdot
    from npgjax.dense import dense_analytic_fisher, dense_fisher
    from npgjax.distributions import Categorical, DiagGaussian, distribution_fisher_vector_product
    from npgjax.estimators import explained_variance, normalize_advantages, surrogate_loss
    from npgjax.fisher import (
        analytic_fisher,
        analytic_fisher_vector_product,
        damped,
        empirical_fisher,
        fisher_vector_product,
    )
    from npgjax.logprob import policy_log_prob_fn, segment_log_probs, trajectory_log_prob
    from npgjax.optimizers import npg, trpo
    from npgjax.returns import discounted_returns, gae, truncation_aware_returns
    from npgjax.sample_space import sample_space_natural_gradient
    from npgjax.scores import per_sample_scores, score_matrix
    from npgjax.solvers import SolveInfo, cholesky_solve, conjugate_gradient
    from npgjax.status import Status, describe_status, diagnostics
    from npgjax.steps import LineSearchInfo, backtracking_line_search, trust_region_scale
    from npgjax.transforms import PreconditionByFisherState, precondition_by_fisher
    from npgjax.trust_region import (
        KLGuardState,
        TrustRegionLineSearchState,
        kl_guard,
        mean_kl,
        trust_region_line_search,
    )

# Where each public name lives: ``import npgjax`` imports no JAX until a name is used
# (a warm start of the command line, npgjax/cli/warm.py, needs only jax).
_EXPORTS = {
    "Categorical": "npgjax.distributions",
    "DiagGaussian": "npgjax.distributions",
    "KLGuardState": "npgjax.trust_region",
    "LineSearchInfo": "npgjax.steps",
    "PreconditionByFisherState": "npgjax.transforms",
    "SolveInfo": "npgjax.solvers",
    "Status": "npgjax.status",
    "TrustRegionLineSearchState": "npgjax.trust_region",
    "analytic_fisher": "npgjax.fisher",
    "analytic_fisher_vector_product": "npgjax.fisher",
    "backtracking_line_search": "npgjax.steps",
    "cholesky_solve": "npgjax.solvers",
    "conjugate_gradient": "npgjax.solvers",
    "damped": "npgjax.fisher",
    "dense_analytic_fisher": "npgjax.dense",
    "dense_fisher": "npgjax.dense",
    "describe_status": "npgjax.status",
    "diagnostics": "npgjax.status",
    "discounted_returns": "npgjax.returns",
    "distribution_fisher_vector_product": "npgjax.distributions",
    "empirical_fisher": "npgjax.fisher",
    "explained_variance": "npgjax.estimators",
    "fisher_vector_product": "npgjax.fisher",
    "gae": "npgjax.returns",
    "kl_guard": "npgjax.trust_region",
    "materialize": "npgjax._tree",
    "mean_kl": "npgjax.trust_region",
    "normalize_advantages": "npgjax.estimators",
    "npg": "npgjax.optimizers",
    "per_sample_scores": "npgjax.scores",
    "policy_log_prob_fn": "npgjax.logprob",
    "precondition_by_fisher": "npgjax.transforms",
    "sample_space_natural_gradient": "npgjax.sample_space",
    "score_matrix": "npgjax.scores",
    "segment_log_probs": "npgjax.logprob",
    "surrogate_loss": "npgjax.estimators",
    "trajectory_log_prob": "npgjax.logprob",
    "tree_vdot": "npgjax._tree",
    "trpo": "npgjax.optimizers",
    "truncation_aware_returns": "npgjax.returns",
    "trust_region_line_search": "npgjax.trust_region",
    "trust_region_scale": "npgjax.steps",
}


def __getattr__(name: str) -> object:
    """Import the module of a public name (or a submodule) on first use."""
    import importlib
    import importlib.util

    from npgjax._gc import paused_gc

    module = _EXPORTS.get(name)
    if module is None:
        if importlib.util.find_spec(f"npgjax.{name}") is None:
            raise AttributeError(f"module 'npgjax' has no attribute {name!r}")
        with paused_gc():  # imports run about 20% faster (npgjax/_gc.py)
            return importlib.import_module(f"npgjax.{name}")
    with paused_gc():
        value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "Categorical",
    "DiagGaussian",
    "KLGuardState",
    "LineSearchInfo",
    "PreconditionByFisherState",
    "SolveInfo",
    "Status",
    "TrustRegionLineSearchState",
    "analytic_fisher",
    "analytic_fisher_vector_product",
    "backtracking_line_search",
    "cholesky_solve",
    "conjugate_gradient",
    "damped",
    "dense_analytic_fisher",
    "dense_fisher",
    "describe_status",
    "diagnostics",
    "discounted_returns",
    "distribution_fisher_vector_product",
    "empirical_fisher",
    "explained_variance",
    "fisher_vector_product",
    "gae",
    "kl_guard",
    "materialize",
    "mean_kl",
    "normalize_advantages",
    "npg",
    "per_sample_scores",
    "policy_log_prob_fn",
    "precondition_by_fisher",
    "sample_space_natural_gradient",
    "score_matrix",
    "segment_log_probs",
    "surrogate_loss",
    "trajectory_log_prob",
    "tree_vdot",
    "trpo",
    "truncation_aware_returns",
    "trust_region_line_search",
    "trust_region_scale",
]
