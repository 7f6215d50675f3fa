"""The assembled pieces of training: networks, distributions, observation prep, ``act``.

:class:`Parts` is what the trainer's ``init``, ``update`` and ``evaluate`` close over:
the config, the environment, the policy and critic networks, the algorithm's update and
the critic's optimiser, with the policy as a distribution for memoryless networks
(``policy``), per step with a hidden state (``policy_step``) or replayed over a whole
rollout (``policy_batch``) for recurrent ones.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import optax

from npgjax.distributions import Categorical, DiagGaussian
from npgjax.rl.configs import Config
from npgjax.rl.envs import EnvSpec
from npgjax.rl.normalize import RunningStats, normalize
from npgjax.rl.recurrent import check_time_batch, unroll

Array = jax.Array
PyTree = Any

__all__ = ["Parts"]


class Parts(NamedTuple):
    """The assembled pieces that ``init``, ``update`` and ``evaluate`` close over."""

    config: Config
    spec: EnvSpec
    pi_net: nn.Module
    vf_net: nn.Module
    algo: Any
    vf_tx: optax.GradientTransformation
    model: Any = None

    @property
    def recurrent(self) -> bool:
        return self.config.network == "gru"

    def _dist(self, pi_params: PyTree, out: Array) -> Any:
        return Categorical(out) if self.spec.discrete else DiagGaussian(out, pi_params["log_std"])

    def policy(self, pi_params: PyTree, obs: Array) -> Any:
        if self.recurrent:
            raise ValueError("a recurrent policy needs its hidden state: use the whole batch "
                             "(PolicyModel.dist_fn) or act(..., carry=...).")
        return self._dist(pi_params, self.pi_net.apply(pi_params["net"], obs))

    def policy_step(self, pi_params: PyTree, obs: Array, carry: Array) -> tuple[Any, Array]:
        carry, out = self.pi_net.apply(pi_params["net"], carry, obs)
        return self._dist(pi_params, out), carry

    def policy_batch(self, pi_params: PyTree, batch: dict[str, Array]) -> Any:
        """The recurrent policy over a flat time-major batch, replayed from ``carry[0]``."""
        T, E = self.config.num_steps, self.config.num_envs
        check_time_batch(batch, T, E)
        obs = batch["obs"].reshape((T, E) + batch["obs"].shape[1:])
        h0 = batch["carry"].reshape((T, E) + batch["carry"].shape[1:])[0]
        out = unroll(self.pi_net, pi_params["net"], h0, obs, batch["done"].reshape(T, E))[0]
        return self._dist(pi_params, out.reshape((T * E,) + out.shape[2:]))

    def value(self, vf_params: PyTree, obs: Array) -> Array:
        return self.vf_net.apply(vf_params, obs)[..., 0]

    def prep(self, stats: RunningStats, obs: Array) -> Array:
        return normalize(stats, obs) if self.config.normalize_obs else obs

    def init_carry(self, n: int) -> PyTree:
        return self.pi_net.initial_carry(n) if self.recurrent else ()

    def raw_act(self, pi_params: PyTree, stats: RunningStats, obs: Array,
                key: Array | None = None, carry: PyTree = None) -> Any:
        """Policy-space actions (not yet mapped to the env's range), and the next carry."""
        obs = self.prep(stats, obs)
        if self.recurrent:
            if carry is None:
                raise ValueError("a recurrent policy (network='gru') needs carry=: its hidden "
                                 "states [n, H], starting from trainer.init_carry(n).")
            dist, carry = self.policy_step(pi_params, obs, carry)
        else:
            dist = self.policy(pi_params, obs)
        return dist.mode() if key is None else dist.sample(key), carry

    def act(self, pi_params: PyTree, stats: RunningStats, obs: Array,
            key: Array | None = None, carry: PyTree = None) -> Any:
        a, new_carry = self.raw_act(pi_params, stats, obs, key, carry)
        a = self.spec.to_env_action(a)
        return a if carry is None else (a, new_carry)
