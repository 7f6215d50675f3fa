"""NPG: the KL-normalised natural-gradient step (Kakade 2001; Rajeswaran et al. 2017)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

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

Array = jax.Array

__all__ = ["NPG", "NPGOptions", "build_natural", "segment_log_prob_fn", "signal_fraction"]


@dataclasses.dataclass(frozen=True)
class NPGOptions:
    """Options of NPG (TRPO adds its line search to these).

    Attributes:
      max_kl: KL bound of each policy step (traced).
      max_kl_decay: the bound decays linearly to ``max_kl * max_kl_decay`` over
        training (1.0 keeps it constant).
      damping: Fisher damping (traced).
      cg_iters: conjugate-gradient iterations.
      fisher: ``"analytic"`` (KL Hessian, exact expectation over actions),
        ``"empirical"`` (score outer products, one per step) or ``"trajectory"`` (the
        empirical Fisher of whole episode segments: the outer products of the scores of
        their log-probabilities, :func:`npgjax.segment_log_probs`; ``max_kl`` then
        bounds the KL per segment rather than per step).
      fisher_fraction: fraction of the batch used for the Fisher (TRPO used 0.1); must
        be 1 for ``"trajectory"`` and for recurrent networks, whose samples are not
        independent steps.
      solver: ``"cg"`` (``cg_iters`` conjugate-gradient iterations) or
        ``"sample_space"``: the exact damped solve through the ``N x N`` Gram matrix of
        the per-step scores (:func:`npgjax.sample_space_natural_gradient`), for
        ``fisher="empirical"`` and memoryless networks; it pays only when the
        ``N = num_envs * num_steps`` steps are far fewer than the policy's parameters.
      signal_power: 0 (off) or ``p > 0``: the KL bound of each step is multiplied by
        ``f ** p``, ``f`` the gradient's estimated signal fraction
        (:func:`signal_fraction`, from two independent halves of the environments). With
        ``p = 2`` the step's length is ``f`` times the trust-region step, the length that
        maximises the expected surrogate gain of a noisy gradient; when the advantages
        are noise (a solved policy at the return cap) ``f`` is near 0 and the policy
        stays where it is instead of taking a full ``max_kl`` step in a random direction.
    """

    max_kl: float = dataclasses.field(default=0.01, metadata=TRACED)
    max_kl_decay: float = 1.0
    damping: float = dataclasses.field(default=0.1, metadata=TRACED)
    cg_iters: int = 10
    fisher: str = "analytic"
    fisher_fraction: float = 1.0
    solver: str = "cg"
    signal_power: float = 0.0

    def validate(self) -> None:
        if self.fisher not in ("analytic", "empirical", "trajectory"):
            raise ValueError(f"fisher must be 'analytic', 'empirical' or 'trajectory', got "
                             f"{self.fisher!r}.")
        if int(self.cg_iters) < 1:
            raise ValueError(f"cg_iters must be a positive integer, got {self.cg_iters}.")
        _check_kl_options(self)
        if self.solver not in ("cg", "sample_space"):
            raise ValueError(f"solver must be 'cg' or 'sample_space', got {self.solver!r}.")
        if self.solver == "sample_space" and self.fisher != "empirical":
            raise ValueError(
                "solver='sample_space' needs independent per-sample scores: use "
                f"fisher='empirical' (got {self.fisher!r}; the analytic Fisher has no scores, "
                "and the rollout's trajectory segments are not separable samples).")
        if not 0 <= float(self.signal_power) < float("inf"):
            raise ValueError(f"signal_power must be a finite number >= 0, got "
                             f"{self.signal_power}.")
        if not 0 < self.fisher_fraction <= 1:
            raise ValueError(f"fisher_fraction must be in (0, 1], got {self.fisher_fraction}.")
        if self.fisher == "trajectory" and self.fisher_fraction != 1:
            raise ValueError("fisher='trajectory' uses whole episode segments: "
                             f"fisher_fraction must be 1, got {self.fisher_fraction}.")


def _check_kl_options(opts: Any) -> None:
    import math

    if not (math.isfinite(float(opts.max_kl)) and float(opts.max_kl) > 0):
        raise ValueError(f"max_kl must be a positive finite number, got {opts.max_kl}.")
    if not (math.isfinite(float(opts.damping)) and opts.damping >= 0):
        raise ValueError(f"damping must be a non-negative finite number, got {opts.damping}.")
    if not 0 < opts.max_kl_decay <= 1:
        raise ValueError(f"max_kl_decay must be in (0, 1], got {opts.max_kl_decay}.")


def signal_fraction(loss_fn: Any, params: Any, batch: dict[str, Array],
                    num_envs: int) -> Array:
    r"""The share of the policy gradient that is signal rather than sampling noise.

    The gradients :math:`g_A, g_B` of the surrogate on two halves of the environments
    (even and odd; independent rollouts) have the same mean :math:`\mu` and independent
    noise, so :math:`g_A \cdot g_B` estimates :math:`|\mu|^2` without bias, while the
    whole batch's :math:`g = (g_A + g_B) / 2` has :math:`E|g|^2 = |\mu|^2 + ` noise:

    .. math:: f = \mathrm{clip}(g_A \cdot g_B / |g|^2, 0, 1).

    Args:
      loss_fn: ``loss_fn(params, batch)``, the mean surrogate loss (linear in ``adv``).
      params: the policy parameters.
      batch: the flat time-major ``[T * E]`` batch with ``adv``.
      num_envs: ``E`` (at least 2).

    Returns:
      ``f`` in ``[0, 1]`` (0 when the gradient is zero or not finite).
    """
    env = jnp.arange(batch["adv"].shape[0]) % num_envs
    half = (env % 2 == 0).astype(batch["adv"].dtype)
    n = batch["adv"].shape[0]
    w_a = half * n / jnp.maximum(jnp.sum(half), 1.0)
    w_b = (1.0 - half) * n / jnp.maximum(n - jnp.sum(half), 1.0)
    g_a = jax.grad(loss_fn)(params, dict(batch, adv=batch["adv"] * w_a))
    g_b = jax.grad(loss_fn)(params, dict(batch, adv=batch["adv"] * w_b))
    pairs = list(zip(jax.tree.leaves(g_a), jax.tree.leaves(g_b), strict=True))
    dot = sum(jnp.vdot(a, b) for a, b in pairs)
    sq = sum(jnp.vdot(a + b, a + b) for a, b in pairs) / 4
    f = jnp.clip(dot / sq, 0.0, 1.0)
    return jnp.where(jnp.isfinite(f), f, 0.0)


def segment_log_prob_fn(model: PolicyModel) -> Any:
    """``fn(params, batch) -> [E * T]``: log-probabilities of the episode segments.

    The per-step log-probabilities of ``model`` (replayed through time for a recurrent
    policy) summed over each episode segment of the ``[T, E]`` rollout, as laid out by
    :func:`npgjax.segment_log_probs` (``batch["done"]`` marks the episode ends). Its
    empirical Fisher, masked to the used slots, is the trajectory Fisher.
    """
    T, E = model.num_steps, model.num_envs

    def fn(params, batch):
        lp = model.log_prob_fn(params, batch).reshape(T, E)
        return segment_log_probs(lp, batch["done"].reshape(T, E))[0]

    return fn


def build_natural(model: PolicyModel, opts: NPGOptions,
                  line_search: dict[str, Any] | None = None) -> PolicyUpdate:
    """NPG's (or, with ``line_search``, TRPO's) update for ``model``."""
    fisher_source = {"analytic": {"dist_fn": model.dist_fn},
                     "empirical": {"log_prob_fn": model.log_prob_fn},
                     "trajectory": {"log_prob_fn": segment_log_prob_fn(model)}}[opts.fisher]
    tx = natural_chain(fisher_source, max_kl=opts.max_kl, damping=opts.damping,
                       cg_iters=opts.cg_iters, solver=opts.solver,
                       line_search=line_search)
    if opts.solver == "sample_space" and model.recurrent:
        raise ValueError("solver='sample_space' needs independent per-step samples; a recurrent "
                         "policy's steps are replayed through time together: use solver='cg'.")
    if opts.signal_power and model.num_envs < 2:
        raise ValueError("signal_power > 0 compares two halves of the environments: "
                         f"num_envs must be at least 2, got {model.num_envs}.")
    B = model.batch_size
    n_fisher = max(1, int(round(opts.fisher_fraction * B)))

    def init(params, hparams):
        return set_hyperparams(tx.init(params), max_kl=hparams["max_kl"],
                               damping=hparams["damping"])

    def step(params, opt_state, data: UpdateData, hparams, progress, key):
        batch = data.batch
        fisher_batch = batch
        extra = {}
        if opts.fisher == "trajectory":
            done = data.traj["done"]
            batch = fisher_batch = dict(batch, done=done.reshape(-1))
            extra["fisher_mask"] = segment_log_probs(
                jnp.zeros(done.shape), done)[1].astype(jnp.float32)
        if n_fisher < B:
            idx = jax.random.permutation(key, B)[:n_fisher]
            fisher_batch = jax.tree.map(lambda x: x[idx], batch)
        g = jax.grad(model.loss_fn)(params, batch)
        max_kl = decayed_max_kl(hparams["max_kl"], opts.max_kl_decay, progress)
        if opts.signal_power:  # shrink the bound when the gradient is mostly noise
            f = signal_fraction(model.loss_fn, params, batch, model.num_envs)
            max_kl = max_kl * jnp.maximum(f ** opts.signal_power, 1e-6)
        opt_state = set_hyperparams(opt_state, max_kl=max_kl, damping=hparams["damping"])
        updates, opt_state = tx.update(g, opt_state, params, batch=batch,
                                       fisher_batch=fisher_batch, **extra)
        return optax.apply_updates(params, updates), opt_state, natural_diagnostics(opt_state)

    return PolicyUpdate(init, step)


NPG = Algorithm("npg", NPGOptions, build_natural,
                "natural policy gradient: a KL-normalised natural step")
