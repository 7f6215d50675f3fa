"""VPG: the vanilla policy gradient of the same surrogate, with adam (a baseline)."""

from __future__ import annotations

import dataclasses

import jax
import optax

from npgjax.rl.algos.base import (
    TRACED,
    Algorithm,
    PolicyModel,
    PolicyUpdate,
    UpdateData,
    nan_diagnostics,
)

__all__ = ["VPG", "VPGOptions"]


@dataclasses.dataclass(frozen=True)
class VPGOptions:
    """Options of VPG.

    Attributes:
      pi_lr: the policy's adam learning rate (traced).
    """

    pi_lr: float = dataclasses.field(default=3e-3, metadata=TRACED)

    def validate(self) -> None:
        if not float(self.pi_lr) > 0:
            raise ValueError(f"pi_lr must be positive, got {self.pi_lr}.")


def _build(model: PolicyModel, opts: VPGOptions) -> PolicyUpdate:
    tx = optax.inject_hyperparams(optax.adam)(learning_rate=opts.pi_lr)

    def init(params, hparams):
        state = tx.init(params)
        state.hyperparams["learning_rate"] = hparams["pi_lr"]
        return state

    def step(params, opt_state, data: UpdateData, hparams, progress, key):
        del progress, key
        g = jax.grad(model.loss_fn)(params, data.batch)
        updates, opt_state = tx.update(g, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, nan_diagnostics()

    return PolicyUpdate(init, step)


VPG = Algorithm("vpg", VPGOptions, _build, "vanilla policy gradient with adam (baseline)")
