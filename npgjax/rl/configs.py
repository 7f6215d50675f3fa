"""Training configuration and per-environment defaults, in one readable place."""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["ALGOS", "ENV_DEFAULTS", "Config", "get_config"]

#: The algorithms ``make_train`` knows.
ALGOS = ("npg", "trpo", "vpg", "enac")


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything ``make_train`` needs. Hashable, so it can be a static argument.

    Attributes:
      env: gymnax environment id.
      algo: ``"npg"`` (KL-normalised natural step), ``"trpo"`` (plus line search),
        ``"vpg"`` (vanilla policy gradient with adam) or ``"enac"`` (episodic natural
        actor-critic).
      total_timesteps: environment steps per seed.
      num_envs: parallel environments (vmapped).
      num_steps: rollout length per environment and update.
      gamma: discount.
      gae_lambda: GAE lambda.
      max_kl: KL bound of each policy step.
      max_kl_decay: the bound decays linearly to ``max_kl * max_kl_decay`` over training
        (1.0 keeps it constant).
      damping: Fisher damping.
      cg_iters: conjugate-gradient iterations.
      fisher: ``"analytic"`` (KL Hessian, exact expectation over actions) or
        ``"empirical"`` (score outer products).
      fisher_fraction: fraction of the batch used for the Fisher (TRPO used 0.1).
      ls_shrink: line-search backtracking factor (trpo).
      ls_max_tries: line-search tries (trpo).
      pi_lr: policy learning rate (vpg only).
      vf_lr: critic learning rate (adam).
      vf_epochs: passes over the rollout per update for the critic.
      vf_minibatch: critic minibatch size (0 = whole rollout).
      hidden: hidden widths of both networks.
      activation: hidden activation.
      normalize_obs: running observation normalisation.
      normalize_adv: normalise advantages per batch.
      init_log_std: initial log std (continuous actions).
      return_window: episodes in the running mean return (the "last 20 episodes").

    Examples:
      >>> from npgjax.rl import Config
      >>> Config(num_envs=4, num_steps=256).batch_size
      1024
    """

    env: str = "CartPole-v1"
    algo: str = "npg"
    total_timesteps: int = 100_000
    num_envs: int = 8
    num_steps: int = 128
    gamma: float = 0.99
    gae_lambda: float = 0.95
    max_kl: float = 0.01
    max_kl_decay: float = 1.0
    damping: float = 0.1
    cg_iters: int = 10
    fisher: str = "analytic"
    fisher_fraction: float = 1.0
    ls_shrink: float = 0.8
    ls_max_tries: int = 10
    pi_lr: float = 3e-3
    vf_lr: float = 1e-3
    vf_epochs: int = 10
    vf_minibatch: int = 0
    hidden: tuple[int, ...] = (64, 64)
    activation: str = "tanh"
    normalize_obs: bool = True
    normalize_adv: bool = True
    init_log_std: float = 0.0
    return_window: int = 20

    @property
    def batch_size(self) -> int:
        return self.num_envs * self.num_steps

    @property
    def num_updates(self) -> int:
        return max(1, -(-self.total_timesteps // self.batch_size))

    def validate(self) -> Config:
        """Raise ValueError naming the first bad field."""
        if self.algo not in ALGOS:
            raise ValueError(f"unknown algo {self.algo!r}; choose one of {ALGOS}.")
        if self.fisher not in ("analytic", "empirical"):
            raise ValueError(f"fisher must be 'analytic' or 'empirical', got {self.fisher!r}.")
        for name in ("total_timesteps", "num_envs", "num_steps", "cg_iters", "ls_max_tries",
                     "vf_epochs", "return_window"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}.")
        for name in ("max_kl", "pi_lr", "vf_lr"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}.")
        if self.damping < 0:
            raise ValueError(f"damping must be non-negative, got {self.damping}.")
        if not 0 < self.max_kl_decay <= 1:
            raise ValueError(f"max_kl_decay must be in (0, 1], got {self.max_kl_decay}.")
        if not 0 < self.fisher_fraction <= 1:
            raise ValueError(f"fisher_fraction must be in (0, 1], got {self.fisher_fraction}.")
        if not 0 < self.ls_shrink < 1:
            raise ValueError(f"ls_shrink must be in (0, 1), got {self.ls_shrink}.")
        if not (0 <= self.gamma <= 1 and 0 <= self.gae_lambda <= 1):
            raise ValueError("gamma and gae_lambda must be in [0, 1].")
        if self.vf_minibatch < 0 or (self.vf_minibatch and self.batch_size % self.vf_minibatch):
            raise ValueError(
                f"vf_minibatch ({self.vf_minibatch}) must divide the batch size "
                f"num_envs * num_steps = {self.batch_size} (or be 0 for the whole batch)."
            )
        return self


#: Defaults per environment, applied by :func:`get_config` before the user's overrides.
ENV_DEFAULTS: dict[str, dict[str, Any]] = {
    # CartPole: max_kl decays to 0.3x, so solved policies stay solved (16 seeds: 16/16
    # npg and 15/16 trpo end at 475, against 13/16 and 12/16 with a constant bound).
    "CartPole-v1": {
        "num_envs": 8, "num_steps": 128, "gamma": 0.99, "gae_lambda": 0.98, "max_kl": 0.01,
        "max_kl_decay": 0.3, "damping": 0.1, "vf_lr": 1e-3, "vf_epochs": 10,
        "vf_minibatch": 256,
    },
    "Acrobot-v1": {
        "num_envs": 8, "num_steps": 128, "gamma": 0.99, "gae_lambda": 0.95, "max_kl": 0.02,
        "damping": 0.1, "vf_lr": 1e-3, "vf_epochs": 10, "vf_minibatch": 256,
    },
    # Pendulum: 2,048 steps per update in 256-step rollouts (longer than an episode) and
    # no observation normalisation were the most stable over 16 seeds (15/16 npg and
    # 16/16 trpo end at -250); with 1,024 steps, 16 envs x 128 steps or running
    # normalisation, late collapses of solved policies were common.
    "Pendulum-v1": {
        "num_envs": 8, "num_steps": 256, "gamma": 0.9, "gae_lambda": 0.95, "max_kl": 0.05,
        "max_kl_decay": 0.1, "damping": 0.1, "vf_lr": 3e-3, "vf_epochs": 20,
        "vf_minibatch": 256, "init_log_std": -1.0, "normalize_obs": False,
    },
}


def get_config(env: str = "CartPole-v1", algo: str = "npg", **overrides: Any) -> Config:
    """The defaults for ``env`` and ``algo``, with ``overrides`` applied and checked.

    Args:
      env: gymnax environment id; any id gymnax knows works, with generic defaults when
        it has no entry in ``ENV_DEFAULTS``.
      algo: one of ``ALGOS``.
      **overrides: any :class:`Config` field.

    Returns:
      A validated :class:`Config`.

    Examples:
      >>> from npgjax.rl import get_config
      >>> get_config("CartPole-v1", "trpo", total_timesteps=50_000).algo
      'trpo'
    """
    from npgjax.rl._gymnax import import_gymnax

    gymnax = import_gymnax()
    if env not in gymnax.registered_envs:
        raise ValueError(
            f"unknown environment {env!r}; gymnax knows: {', '.join(gymnax.registered_envs)}."
        )
    fields = {f.name for f in dataclasses.fields(Config)}
    bad = sorted(set(overrides) - fields)
    if bad:
        raise ValueError(f"unknown config option(s) {bad}; valid options: {sorted(fields)}.")
    base: dict[str, Any] = dict(ENV_DEFAULTS.get(env, {}))
    base.update(overrides)
    # A default critic minibatch that does not fit a user-chosen batch becomes the batch.
    if "vf_minibatch" not in overrides and base.get("vf_minibatch"):
        batch = base.get("num_envs", Config.num_envs) * base.get("num_steps", Config.num_steps)
        if batch % base["vf_minibatch"]:
            base["vf_minibatch"] = 0
    if "hidden" in base:
        base["hidden"] = tuple(base["hidden"])
    return Config(env=env, algo=algo, **base).validate()
