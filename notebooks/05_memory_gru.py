# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 5. Memory: a GRU policy where an MLP cannot learn
#
# MemoryChain-bsuite shows a bit in the first observation and asks for it back with
# the action at the last step; the return is +1 for the right answer and -1 for the
# wrong one. A memoryless policy sees nothing of the bit at the last step, so its
# expected return is 0 whatever it learns. A GRU policy (`network="gru"`) carries a
# hidden state across steps, reset at each episode start.
#
# For a policy with memory, $\log p_\theta(\tau) = \sum_t \log \pi_\theta(a_t \mid h_t)$
# with $h_t$ the hidden state, a function of the whole history: the update replays
# each rollout segment through `lax.scan` from its stored initial state, and the
# gradient and every Fisher-vector product flow through the recurrence by jvp/vjp
# (see the concepts page "The trajectory Fisher with memory").

# %%
import os
import time
from pathlib import Path

import jax
import matplotlib.pyplot as plt
import numpy as np

from npgjax.rl import get_config, make_train

QUICK = os.environ.get("NPGJAX_NOTEBOOK_QUICK", "0") not in ("", "0")
ROOT = Path.cwd() if (Path.cwd() / "docs").is_dir() else Path.cwd().parent
FIG_DIR = ROOT / "docs" / "figures"
FIG_DIR.mkdir(parents=True, exist_ok=True)
T0 = time.perf_counter()

NUM_SEEDS = 2 if QUICK else 4
TOTAL_TIMESTEPS = 8_192 if QUICK else 30_720

# %% [markdown]
# ## The same NPG, two networks
#
# Everything but `network` is the same: NPG with its defaults, 8 environments of 128
# steps per update, evaluation of the deterministic policy (20 episodes) every 4
# updates.

# %%
results = {}
for network in ("gru", "mlp"):
    config = get_config("MemoryChain-bsuite", "npg", network=network,
                        total_timesteps=TOTAL_TIMESTEPS, eval_every=4, eval_episodes=20)
    train = jax.jit(jax.vmap(make_train(config)))
    t = time.perf_counter()
    _, metrics = train(jax.random.split(jax.random.PRNGKey(0), NUM_SEEDS))
    jax.block_until_ready(metrics)
    results[network] = jax.device_get(metrics)
    print(f"{network}: {NUM_SEEDS} seeds x {config.num_updates} updates in "
          f"{time.perf_counter() - t:.1f} s (compilation included)")

# %% [markdown]
# ## Evaluation return per seed
#
# `eval_return` is NaN between evaluations; we plot the evaluations only.

# %%
fig, ax = plt.subplots(figsize=(6, 3.5))
for network, color in (("gru", "tab:blue"), ("mlp", "tab:orange")):
    m = results[network]
    ev = np.asarray(m["eval_return"])
    steps = np.asarray(m["env_steps"])[0]
    at = ~np.isnan(ev[0])
    for i in range(NUM_SEEDS):
        ax.plot(steps[at], ev[i, at], color=color, alpha=0.6,
                label=network if i == 0 else None)
    final = ev[:, at][:, -1]
    print(f"{network}: final evaluation return per seed {np.round(final, 2).tolist()}")
ax.axhline(0.0, color="0.6", lw=1, ls="--")
ax.set(xlabel="env steps per seed", ylabel="evaluation return (20 episodes)",
       title="MemoryChain-bsuite, NPG", ylim=(-1.1, 1.1))
ax.legend()
fig.tight_layout()
fig.savefig(FIG_DIR / "05_memory_gru_vs_mlp.png", dpi=120)

# %%
gru_final = np.asarray(results["gru"]["eval_return"])[:, -1]
mlp_final = np.asarray(results["mlp"]["eval_return"])[:, -1]
print("GRU final mean", gru_final.mean(), "MLP final mean", mlp_final.mean())
print(f"notebook wall time {time.perf_counter() - T0:.1f} s")
