"""The one interface every algorithm implements, and the pieces they share.

An :class:`Algorithm` is a name, a frozen dataclass of its own options, and ``build``:
given the policy (:class:`PolicyModel`) and its options, it returns a
:class:`PolicyUpdate` of two pure functions, ``init`` (the optimiser state) and
``step`` (one policy update from a rollout). Fields of the options marked
``traced=True`` in their metadata are traced hyperparameters: they live in the runner
state and can be vmapped over.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from npgjax.estimators import surrogate_loss

Array = jax.Array
PyTree = Any

__all__ = [
    "DIAGNOSTICS",
    "TRACED",
    "Algorithm",
    "PolicyModel",
    "PolicyUpdate",
    "UpdateData",
    "decayed_max_kl",
    "traced_fields",
]

#: Field metadata that marks a hyperparameter as traced (vmappable, in the state).
TRACED = {"traced": True}

#: Diagnostics every algorithm reports (NaN where it has none), in metrics order.
DIAGNOSTICS = ("max_kl", "predicted_kl", "cg_iterations", "cg_residual", "cosine",
               "ls_tries", "ls_accepted")


def traced_fields(obj: Any) -> tuple[str, ...]:
    """Names of the fields of a dataclass (instance or type) marked ``traced=True``."""
    return tuple(f.name for f in dataclasses.fields(obj) if f.metadata.get("traced"))


class PolicyModel(NamedTuple):
    """The policy as the algorithms see it.

    Attributes:
      dist: ``dist(params, obs) -> distribution`` (Categorical or DiagGaussian).
      num_steps: rollout length ``T``.
      num_envs: parallel environments ``E`` (the batch is ``T * E`` samples, time-major).
      dist_batch: for a recurrent policy, ``dist_batch(params, batch) -> distribution``
        over the whole flat batch, replayed through time from ``batch["carry"]`` (see
        :mod:`npgjax.rl.recurrent`); ``dist_fn`` and ``log_prob_fn`` use it when set.
    """

    dist: Callable[[PyTree, Array], Any]
    num_steps: int
    num_envs: int
    dist_batch: Callable[[PyTree, dict[str, Array]], Any] | None = None

    @property
    def batch_size(self) -> int:
        return self.num_steps * self.num_envs

    @property
    def recurrent(self) -> bool:
        return self.dist_batch is not None

    def dist_fn(self, params: PyTree, batch: dict[str, Array]) -> Any:
        if self.dist_batch is not None:
            return self.dist_batch(params, batch)
        return self.dist(params, batch["obs"])

    def log_prob_fn(self, params: PyTree, batch: dict[str, Array]) -> Array:
        return self.dist_fn(params, batch).log_prob(batch["actions"])

    def loss_fn(self, params: PyTree, batch: dict[str, Array]) -> Array:
        return surrogate_loss(self.log_prob_fn(params, batch), batch["old_logp"], batch["adv"])


class UpdateData(NamedTuple):
    """What one policy update sees.

    Attributes:
      batch: flat samples ``[T * E, ...]``: ``obs``, ``actions``, ``old_logp``, ``adv``
        (a recurrent policy's batch also ``carry`` and ``done``).
      traj: the ``[T, E]`` rollout: ``reward``, ``terminated``, ``truncated``, ``done``.
      next_values: ``[T, E]`` critic values of the true next observations.
    """

    batch: dict[str, Array]
    traj: dict[str, Array]
    next_values: Array


class PolicyUpdate(NamedTuple):
    """The pure functions of one algorithm, built for one policy.

    Attributes:
      init: ``init(params, hparams) -> opt_state``.
      step: ``step(params, opt_state, data, hparams, progress, key) -> (params,
        opt_state, diagnostics)``; ``progress`` is the fraction of training done and
        ``diagnostics`` a dict with keys from :data:`DIAGNOSTICS`.
    """

    init: Callable[[PyTree, dict[str, Array]], PyTree]
    step: Callable[..., tuple[PyTree, PyTree, dict[str, Array]]]


class Algorithm(NamedTuple):
    """A policy-update rule the trainer can run.

    Attributes:
      name: its name in configs and on the command line.
      options: a frozen dataclass of its own options, with defaults; a ``validate()``
        method raising ValueError is called by the config.
      build: ``build(model, options) -> PolicyUpdate``.
      summary: one line for help texts.
    """

    name: str
    options: type
    build: Callable[[PolicyModel, Any], PolicyUpdate]
    summary: str = ""


def decayed_max_kl(max_kl: Array, decay: float, progress: Array) -> Array:
    """``max_kl`` shrunk linearly to ``max_kl * decay`` over training (progress 0 to 1)."""
    if decay == 1.0:
        return max_kl
    return max_kl * (1.0 - (1.0 - decay) * progress)


def nan_diagnostics(**known: Array) -> dict[str, Array]:
    """All :data:`DIAGNOSTICS`, NaN except those given."""
    out = {k: jnp.asarray(jnp.nan, jnp.float32) for k in DIAGNOSTICS}
    out.update({k: jnp.asarray(v, jnp.float32) for k, v in known.items()})
    return out
