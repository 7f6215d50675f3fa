"""The RL layer: jitted gymnax training with NPG, TRPO, VPG and eNAC.

It sits above the core and the core never imports it.
"""

from npgjax.rl.configs import ALGOS, ENV_DEFAULTS, Config, get_config
from npgjax.rl.networks import MLP, orthogonal
from npgjax.rl.trainer import HPARAMS, RunnerState, Trainer, make_train, make_trainer

__all__ = [
    "ALGOS",
    "ENV_DEFAULTS",
    "HPARAMS",
    "MLP",
    "Config",
    "RunnerState",
    "Trainer",
    "get_config",
    "make_train",
    "make_trainer",
    "orthogonal",
]
