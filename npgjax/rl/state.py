"""The shared types of training: the runner state and the trainer's pure functions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax

from npgjax.rl.configs import Config
from npgjax.rl.envs import EnvSpec
from npgjax.rl.normalize import RunningStats

Array = jax.Array
PyTree = Any

__all__ = ["RunnerState", "Trainer"]


class RunnerState(NamedTuple):
    """Everything that changes during training (a pytree; checkpoint it as is).

    Attributes:
      pi_params: policy parameters (``{"net": flax params}`` plus ``"log_std"`` for
        continuous actions).
      vf_params: critic parameters.
      vf_opt_state: the critic's adam state.
      pi_opt_state: the algorithm's optimiser state (its diagnostics included).
      obs_stats: running observation statistics.
      env_state: vmapped gymnax environment states.
      obs: current raw observations ``[num_envs, ...]``.
      ep_return: running return of each environment's current episode.
      ep_length: running length of each environment's current episode.
      return_buffer: returns of the last ``return_window`` finished episodes.
      length_buffer: their lengths.
      num_episodes: episodes finished so far.
      key: PRNG key (training is a deterministic function of it).
      update: number of updates done.
      hparams: the traced hyperparameters (``config.traced``).
      memory: recurrent networks' hidden states, ``{"pi": [num_envs, H], "vf":
        [num_envs, H]}`` (zeros at episode starts); ``()`` for memoryless networks.
    """

    pi_params: PyTree
    vf_params: PyTree
    vf_opt_state: PyTree
    pi_opt_state: PyTree
    obs_stats: RunningStats
    env_state: PyTree
    obs: Array
    ep_return: Array
    ep_length: Array
    return_buffer: Array
    length_buffer: Array
    num_episodes: Array
    key: Array
    update: Array
    hparams: dict[str, Array]
    memory: PyTree = ()


class UpdatePieces(NamedTuple):
    """One update in four pure pieces (internal: :mod:`npgjax.rl.update`).

    Attributes:
      front: ``front(state) -> f``: the rollout, advantages and value targets (a dict).
      policy: ``policy(state, f) -> (pi_params, pi_opt_state, diagnostics)``.
      critic: ``critic(state, f) -> (vf_params, vf_opt_state)``.
      back: ``back(state, f, policy result, critic result) -> (state, metrics)``.
    """

    front: Callable[[RunnerState], dict[str, Any]]
    policy: Callable[[RunnerState, dict[str, Any]], Any]
    critic: Callable[[RunnerState, dict[str, Any]], Any]
    back: Callable[..., tuple[RunnerState, dict[str, Array]]]


class Trainer(NamedTuple):
    """The pure pieces of training.

    Attributes:
      init: ``init(key, hparams=None) -> RunnerState``.
      update: ``update(state) -> (state, metrics)``: one rollout, one policy step, one
        critic fit. Scan it for many (or use :func:`run_updates`).
      evaluate: ``evaluate(state) -> {"eval_return", "eval_length"}``: the deterministic
        policy on ``eval_episodes`` fresh environments.
      act: ``act(pi_params, obs_stats, obs, key=None, carry=None)``: env actions for a
        batch of observations, deterministic without a key, sampled with one. With a
        ``carry`` (the hidden states ``[n, H]`` of a recurrent policy, ``()`` for a
        memoryless one) it returns ``(actions, next_carry)``; a recurrent policy needs
        it. Start from ``init_carry(n)`` and zero the rows of finished episodes.
      config: the validated config.
      env: the :class:`~npgjax.rl.EnvSpec`.
      init_carry: ``init_carry(n)``: the policy's initial hidden states for ``n``
        environments (zeros ``[n, H]``; ``()`` for a memoryless policy).
      model: the :class:`~npgjax.rl.algos.PolicyModel` the algorithm updates (its
        ``dist_fn``/``log_prob_fn`` over flat time-major batches).
    """

    init: Callable[..., RunnerState]
    update: Callable[[RunnerState], tuple[RunnerState, dict[str, Array]]]
    evaluate: Callable[[RunnerState], dict[str, Array]]
    act: Callable[..., Array]
    config: Config
    env: EnvSpec
    init_carry: Callable[[int], PyTree] = lambda n: ()
    model: Any = None
