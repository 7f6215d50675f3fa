"""Command line training: ``python -m npgjax.train`` (console script ``npgjax-train``).

Trains one algorithm on one gymnax environment for several seeds at once (the seeds are
vmapped), in jitted chunks of updates. Between chunks it writes the metrics, a summary and
a checkpoint, so an interrupted run can be continued with ``--resume``; at the end it
prints a result block and saves a learning curve and a diagnostics figure.

Examples::

    # NPG on CartPole with 8 seeds, outputs in runs/CartPole-v1-npg/
    python -m npgjax.train --env CartPole-v1 --algo npg --seeds 8

    # TRPO on Pendulum with a larger trust region and a smaller network
    npgjax-train --env Pendulum-v1 --algo trpo --total-timesteps 300000 \\
        --set max_kl=0.02 --set "hidden=(32, 32)" --out runs/pendulum-trpo

    # continue an interrupted run (same options, same --out)
    npgjax-train --env Pendulum-v1 --algo trpo --total-timesteps 300000 \\
        --set max_kl=0.02 --set "hidden=(32, 32)" --out runs/pendulum-trpo --resume

Outputs in ``--out`` (default ``runs/<env>-<algo>``):

* ``metrics.csv``: one row per seed and update: ``seed, update, env_steps`` and every
  metric of :func:`npgjax.rl.make_train` (``train_return`` is the mean of the last
  ``return_window`` training episodes, NaN until an episode has ended; ``eval_return``
  the deterministic policy's mean return on ``eval_episodes`` fresh episodes, every
  ``eval_every`` updates and after the last, NaN in between).
* ``summary.json``: the config, final training and evaluation returns per seed, their
  mean and std, how many seeds end at the target, timings (compilation separately),
  throughput, and the device.
* ``checkpoint.msgpack`` and ``checkpoint.json``: the training state of all seeds and
  the metrics so far (msgpack), the format version and the config (JSON); no pickle.
* ``learning_curve.png`` and ``diagnostics.png`` (unless ``--no-plot``).

Options: ``--set key=value`` sets any :class:`npgjax.rl.Config` field or option of the
algorithm (values are Python literals: ``--set max_kl=0.02 --set "hidden=(32, 32)"
--set normalize_obs=False``; an option the algorithm does not use is an error);
``--env-kwargs key=value`` passes constructor arguments to the environment
(``--env DeepSea-bsuite --env-kwargs size=16``) and ``--env-params key=value`` sets
fields of its params (``--env-params max_steps_in_episode=200``);
``--chunk-updates K`` sets the updates per jitted chunk (rounded down to a divisor of the
number of updates, so one compiled chunk serves the whole run); ``--target R`` sets the
return that counts as solved: its first crossing is timed and the seeds that end at it
are counted, on the evaluation return when evaluation is on (default: the environment's
entry in :data:`npgjax.rl.SOLVED_RETURNS`, e.g. CartPole-v1 475, Catch-bsuite 1; the
command says when it knows none). JAX's persistent compilation cache is used unless
``--no-compile-cache`` (directory ``$NPGJAX_CACHE_DIR``, default ``~/.cache/npgjax/jax``;
``--no-compile-cache`` also turns off one that ``$JAX_COMPILATION_CACHE_DIR`` names);
the traced and lowered training chunk is kept there too (``jax.export``), so a warm start
skips tracing as well as compiling, and a manifest keyed by the command's options lets it
start reading both programs before it builds the config and the trainer
(:mod:`npgjax.cli.warm`). Either is rebuilt when the config, the seed count, the chunk
size, the device, a package version or npgjax's source changes.

Devices and hosts: ``--devices N`` trains on the first N devices (default: all) and
``--shard seeds|envs|both`` says what is split over them: the seeds (the default), the
environments of each seed (one policy, the same global batch, global means) or both
(see :mod:`npgjax.rl.sharding`). With one device the run is the plain vmapped one. For
several hosts start one process per host with ``--coordinator HOST:PORT
--num-processes N --process-id I`` (or ``NPGJAX_COORDINATOR``, ``NPGJAX_NUM_PROCESSES``,
``NPGJAX_PROCESS_ID``): each calls ``jax.distributed.initialize`` first and drives its
local devices, and process 0 writes the outputs.
"""

from __future__ import annotations

import sys

from npgjax.cli.args import build_parser, choose_chunk_updates, parse_set
from npgjax.cli.compile import compile_training
from npgjax.cli.train import main

__all__ = ["build_parser", "choose_chunk_updates", "compile_training", "main", "parse_set"]

if __name__ == "__main__":
    sys.exit(main())
