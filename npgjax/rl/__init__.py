"""The RL layer: jitted gymnax training with NPG, TRPO, VPG and eNAC.

It sits above the core and the core never imports it. It needs the ``rl`` extra
(gymnax and flax): ``pip install 'npgjax[rl]'``.
"""

import importlib.util as _util

_missing = [m for m in ("gymnax", "flax") if _util.find_spec(m) is None]
if _missing:
    raise ImportError(
        f"npgjax.rl needs {' and '.join(_missing)}, which the core install leaves out: "
        "pip install 'npgjax[rl]' (or 'npgjax[train]' for the command line's figures, "
        "progress bar and traced-chunk cache too)"
    )

from npgjax._gc import paused_gc as _paused_gc  # noqa: E402

with _paused_gc():  # imports run about 20% faster (npgjax/_gc.py)
    from npgjax.rl.algos import (
        ALGORITHMS,
        Algorithm,
        ENACOptions,
        NPGOptions,
        TRPOOptions,
        VPGOptions,
        register_algorithm,
    )
    from npgjax.rl.configs import ALGOS, ENV_DEFAULTS, Config, get_config
    from npgjax.rl.envs import SOLVED_RETURNS, EnvSpec, default_target, make_env
    from npgjax.rl.mesh import make_mesh
    from npgjax.rl.networks import (
        CNN,
        MLP,
        GRUNet,
        TorsoHead,
        dense_dot_general,
        make_networks,
        orthogonal,
    )
    from npgjax.rl.policy import Policy, evaluate_policy, load_policy, save_policy
    from npgjax.rl.sharding import make_sharded_train, make_sharded_trainer
    from npgjax.rl.trainer import (
        RunnerState,
        Trainer,
        make_train,
        make_trainer,
        run_updates,
    )
    from npgjax.rl.wrappers import KeepObservations
    from npgjax.rl.xla import compiler_options

__all__ = [
    "ALGORITHMS",
    "ALGOS",
    "CNN",
    "ENV_DEFAULTS",
    "MLP",
    "SOLVED_RETURNS",
    "Algorithm",
    "Config",
    "ENACOptions",
    "EnvSpec",
    "GRUNet",
    "KeepObservations",
    "NPGOptions",
    "Policy",
    "RunnerState",
    "TRPOOptions",
    "TorsoHead",
    "Trainer",
    "VPGOptions",
    "compiler_options",
    "default_target",
    "dense_dot_general",
    "evaluate_policy",
    "get_config",
    "load_policy",
    "make_env",
    "make_mesh",
    "make_networks",
    "make_sharded_train",
    "make_sharded_trainer",
    "make_train",
    "make_trainer",
    "orthogonal",
    "register_algorithm",
    "run_updates",
    "save_policy",
]
