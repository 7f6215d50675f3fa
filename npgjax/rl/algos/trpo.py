"""TRPO: the natural step followed by a backtracking line search (Schulman et al. 2015)."""

from __future__ import annotations

import dataclasses

from npgjax.rl.algos.base import Algorithm, PolicyModel, PolicyUpdate
from npgjax.rl.algos.npg import NPGOptions, build_natural

__all__ = ["TRPO", "TRPOOptions"]


@dataclasses.dataclass(frozen=True)
class TRPOOptions(NPGOptions):
    """NPG's options plus the line search's.

    Attributes:
      ls_shrink: backtracking factor in (0, 1).
      ls_max_tries: candidates tried before the step is rejected.
    """

    ls_shrink: float = 0.8
    ls_max_tries: int = 10

    def validate(self) -> None:
        super().validate()
        if not 0 < self.ls_shrink < 1:
            raise ValueError(f"ls_shrink must be in (0, 1), got {self.ls_shrink}.")
        if int(self.ls_max_tries) < 1:
            raise ValueError(f"ls_max_tries must be a positive integer, got "
                             f"{self.ls_max_tries}.")


def _build(model: PolicyModel, opts: TRPOOptions) -> PolicyUpdate:
    return build_natural(model, opts, line_search={
        "loss_fn": model.loss_fn, "dist_fn": model.dist_fn, "shrink": opts.ls_shrink,
        "max_tries": opts.ls_max_tries})


TRPO = Algorithm("trpo", TRPOOptions, _build,
                 "trust region policy optimisation: the natural step plus a KL line search")
