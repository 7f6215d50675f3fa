r"""Episodic natural actor-critic (Peters & Schaal, 2008) on auto-reset rollouts.

eNAC regresses episode returns on the compatible features, the trajectory scores
:math:`\psi_k = \nabla_\theta \log p_\theta(\tau_k)`, with a baseline term:

.. math:: \min_{w, b} \sum_k m_k (\psi_k^\top w + b - R_k)^2 .

Eliminating ``b`` leaves the normal equations :math:`\mathrm{Cov}(\psi)\, w =
\mathrm{Cov}(\psi, R)`, i.e. the centred empirical trajectory Fisher times ``w`` equals
the gradient of :math:`\sum_k m_k (R_k - \bar R) \log p_\theta(\tau_k) / \sum_k m_k`.
So ``w`` is the natural gradient, and the core's ``precondition_by_fisher`` with
``centered=True`` over segment log-probs computes it without materialising ``psi``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from npgjax.estimators import truncation_aware_returns
from npgjax.logprob import segment_log_probs
from npgjax.rl.algos.base import (
    TRACED,
    Algorithm,
    PolicyModel,
    PolicyUpdate,
    UpdateData,
    decayed_max_kl,
)
from npgjax.rl.algos.natural import natural_chain, natural_diagnostics, set_hyperparams
from npgjax.rl.algos.npg import _check_kl_options, segment_log_prob_fn

__all__ = ["ENAC", "ENACOptions", "enac_objective", "segment_returns"]


def segment_returns(
    rewards: jax.Array,
    next_values: jax.Array,
    terminated: jax.Array,
    truncated: jax.Array,
    gamma: float | jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """Discounted return of each episode segment of a ``[T, E]`` rollout, from its start.

    Segments are laid out as in :func:`npgjax.segment_log_probs`. A segment cut by the end
    of the rollout or by truncation is bootstrapped with ``next_values``.

    Args:
      rewards: ``[T, E]`` rewards.
      next_values: ``[T, E]`` values of the true next observations.
      terminated: ``[T, E]`` termination flags.
      truncated: ``[T, E]`` truncation flags.
      gamma: discount.

    Returns:
      ``(returns, mask)``, both ``[E * T]``.
    """
    G = truncation_aware_returns(rewards, next_values, terminated, truncated, gamma)
    done = terminated | truncated
    start = jnp.concatenate([jnp.ones((1,) + done.shape[1:], bool), done[:-1]], axis=0)
    return segment_log_probs(jnp.where(start, G, 0.0), done)


def enac_objective(
    seg_log_probs: jax.Array, seg_returns: jax.Array, seg_mask: jax.Array
) -> jax.Array:
    r"""The loss whose gradient is :math:`-\mathrm{Cov}(\psi, R)` (minimise it).

    .. math:: L(\theta) = -\sum_k w_k (R_k - \bar R) \log p_\theta(\tau_k)

    Args:
      seg_log_probs: ``[K]`` segment log-probabilities (differentiable).
      seg_returns: ``[K]`` segment returns (treated as constants).
      seg_mask: ``[K]`` valid segments.

    Returns:
      A scalar loss.
    """
    m = seg_mask.astype(seg_log_probs.dtype)
    w = m / jnp.maximum(jnp.sum(m), 1.0)
    centred = jax.lax.stop_gradient((seg_returns - jnp.sum(w * seg_returns)) * w)
    return -jnp.sum(centred * seg_log_probs)


@dataclasses.dataclass(frozen=True)
class ENACOptions:
    """Options of eNAC. Its Fisher is always the centred empirical trajectory Fisher
    over episode segments, on the whole batch, so it has no ``fisher`` options.

    Attributes:
      max_kl: KL bound of each policy step (traced).
      max_kl_decay: linear decay of the bound to ``max_kl * max_kl_decay``.
      damping: Fisher damping (traced).
      cg_iters: conjugate-gradient iterations.
    """

    max_kl: float = dataclasses.field(default=0.01, metadata=TRACED)
    max_kl_decay: float = 1.0
    damping: float = dataclasses.field(default=0.1, metadata=TRACED)
    cg_iters: int = 10

    def validate(self) -> None:
        if int(self.cg_iters) < 1:
            raise ValueError(f"cg_iters must be a positive integer, got {self.cg_iters}.")
        _check_kl_options(self)


def _build(model: PolicyModel, opts: ENACOptions) -> PolicyUpdate:
    seg_log_prob_fn = segment_log_prob_fn(model)
    tx = natural_chain({"log_prob_fn": seg_log_prob_fn}, max_kl=opts.max_kl,
                       damping=opts.damping, cg_iters=opts.cg_iters, centered=True)

    def init(params, hparams):
        return set_hyperparams(tx.init(params), max_kl=hparams["max_kl"],
                               damping=hparams["damping"])

    def step(params, opt_state, data: UpdateData, hparams, progress, key):
        del key
        traj = data.traj
        R, seg_mask = segment_returns(traj["reward"], data.next_values, traj["terminated"],
                                      traj["truncated"], hparams["gamma"])
        batch = dict(data.batch, done=traj["done"].reshape(-1))
        g = jax.grad(lambda p: enac_objective(seg_log_prob_fn(p, batch), R, seg_mask))(params)
        max_kl = decayed_max_kl(hparams["max_kl"], opts.max_kl_decay, progress)
        opt_state = set_hyperparams(opt_state, max_kl=max_kl, damping=hparams["damping"])
        updates, opt_state = tx.update(g, opt_state, params, batch=batch,
                                       fisher_mask=seg_mask.astype(jnp.float32))
        return optax.apply_updates(params, updates), opt_state, natural_diagnostics(opt_state)

    return PolicyUpdate(init, step)


ENAC = Algorithm("enac", ENACOptions, _build,
                 "episodic natural actor-critic: regression on trajectory scores")
