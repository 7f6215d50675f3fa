"""Evaluate trained policies: ``python -m npgjax.evaluate RUN_DIR`` (``npgjax-evaluate``).

Loads every trained seed of a run directory written by ``npgjax-train`` (or by
:func:`npgjax.rl.save_policy`), runs ``--episodes`` episodes per seed in one jitted
call vmapped over seeds and episodes, prints the mean and standard deviation of the
return per seed next to the training result, and writes a JSON summary.

Examples::

    # 100 deterministic episodes per seed; summary in runs/CartPole-v1-npg/evaluation.json
    python -m npgjax.evaluate runs/CartPole-v1-npg

    # seeds 0 and 2, sampled actions, and a GIF of one episode of seed 0
    npgjax-evaluate runs/CartPole-v1-npg --seeds 0 2 --stochastic --render cartpole.gif

Options: ``--episodes N`` (default 100), ``--seeds S ...`` (default: all),
``--stochastic`` (sample actions instead of the argmax or mean), ``--max-steps N`` (step
cap per episode), ``--key K`` (PRNG seed), ``--render OUT.gif`` (one episode of the first
chosen seed: matplotlib drawings of CartPole, Pendulum, Acrobot and MountainCar, gymnax's
visualiser for Catch, MinAtar and the misc environments), ``--out FILE.json`` (default
``RUN_DIR/evaluation.json``). Errors are one line on stderr with exit status 2.
"""

from __future__ import annotations

import sys

from npgjax.cli.evaluate import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
