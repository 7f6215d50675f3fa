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
# # 3. Pendulum with TRPO
#
# TRPO (Schulman et al., 2015) is the natural policy gradient plus a check. The natural
# step
#
# $$
# d = -\sqrt{\frac{2\epsilon}{g^\top x}}\; x, \qquad x \approx (F + \lambda I)^{-1} g,
# $$
#
# has a *predicted* KL of $\epsilon$ under the quadratic model
# $\mathrm{KL} \approx \tfrac12 d^\top F d$. The model can be wrong, so TRPO then
# backtracks: it tries $\theta + c^k d$ for $k = 0, 1, \dots$ (with $c$ =
# `ls_shrink` = 0.8) and accepts the first candidate whose *measured* mean KL
# $\frac1N \sum_s \mathrm{KL}(\pi_{\text{old}}(\cdot|s) \,\|\, \pi_\theta(\cdot|s))$ is at
# most $\epsilon$ **and** whose surrogate loss is lower than before. If no try passes
# (`ls_max_tries` = 10), the policy is left unchanged.
#
# In npgjax this is an optax chain,
# `npgjax.trpo(dist_fn, loss_fn, max_kl=...)` =
# `chain(precondition_by_fisher(dist_fn=..., max_kl=...), scale(-1),
# trust_region_line_search(loss_fn, mean_kl(dist_fn), max_kl=...))`, and the RL layer
# uses it with `algo="trpo"`. Here we train a Gaussian policy on gymnax's Pendulum-v1,
# with the Pendulum defaults of `get_config`, with TRPO and, for comparison, with NPG
# (the same step without the line search), and look at the KL of every update and at
# the line-search tries.

# %%
import os
import time
from pathlib import Path

import jax
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import NullFormatter

from npgjax.rl import get_config, make_train

QUICK = os.environ.get("NPGJAX_NOTEBOOK_QUICK", "0") not in ("", "0")
ROOT = Path.cwd() if (Path.cwd() / "docs").is_dir() else Path.cwd().parent
FIG_DIR = ROOT / "docs" / "figures"
FIG_DIR.mkdir(parents=True, exist_ok=True)
T0 = time.perf_counter()

NUM_SEEDS = 4
TOTAL_TIMESTEPS = 20_000 if QUICK else 120_000

# %%
configs = {
    algo: get_config("Pendulum-v1", algo, total_timesteps=TOTAL_TIMESTEPS)
    for algo in ("trpo", "npg")
}
cfg = configs["trpo"]
print(cfg)
print(
    f"max_kl = {cfg.max_kl} (decaying linearly to {cfg.max_kl * cfg.max_kl_decay:g} over "
    f"training), damping = {cfg.damping}, cg_iters = {cfg.cg_iters}, "
    f"ls_shrink = {cfg.ls_shrink}, ls_max_tries = {cfg.ls_max_tries}"
)

# %% [markdown]
# Both algorithms run on the same four seeds, each as one jitted, vmapped call.

# %%
keys = jax.random.split(jax.random.PRNGKey(0), NUM_SEEDS)
metrics = {}
for algo, config in configs.items():
    t = time.perf_counter()
    _, m = jax.jit(jax.vmap(make_train(config)))(keys)
    metrics[algo] = jax.tree.map(np.asarray, jax.block_until_ready(m))
    print(
        f"{algo}: {config.num_updates} updates x {NUM_SEEDS} seeds "
        f"in {time.perf_counter() - t:.1f} s (compile included)"
    )

for algo, m in metrics.items():
    print(f"{algo}: final return per seed {np.round(m['train_return'][:, -1], 1)}")

# %% [markdown]
# ## The KL of each update
#
# `metrics["kl"]` is the measured mean KL between the policy before and after the
# update, on the rollout's states: for TRPO the KL of the accepted step, for NPG the KL
# of the full natural step. `metrics["max_kl"]` is the bound $\epsilon$ of that
# update for both (the Pendulum defaults let `max_kl` decay over training,
# `max_kl_decay`), so each measured KL is compared with the bound of its own update.

# %%
tr, npg = metrics["trpo"], metrics["npg"]
steps = tr["env_steps"][0]


def kl_ratio(m):
    """Measured KL / the update's bound, for the updates that took a step."""
    ok = m["predicted_kl"] > 0
    return m["kl"][ok] / m["max_kl"][ok]


ratio_tr, ratio_npg = kl_ratio(tr), kl_ratio(npg)
for name, ratio in (("TRPO", ratio_tr), ("NPG ", ratio_npg)):
    print(
        f"{name}: measured KL / bound, median {np.median(ratio):.2f}, max {ratio.max():.2f}, "
        f"above the bound in {np.mean(ratio > 1 + 1e-6):.1%} of updates"
    )
tries = tr["ls_tries"].ravel()
print(
    f"TRPO line search: tries per update {np.bincount(tries.astype(int))[1:]} "
    f"(for 1, 2, ... tries); accepted in {tr['ls_accepted'].mean():.1%} of updates"
)

# %%
fig, axes = plt.subplots(2, 2, figsize=(12, 8))
colors = {"trpo": "tab:purple", "npg": "tab:orange"}

ax = axes[0, 0]
for algo, m in metrics.items():
    r = m["train_return"]
    some = ~np.all(np.isnan(r), 0)  # the first update may end no episode
    ax.plot(
        steps[some], np.nanmean(r[:, some], 0), color=colors[algo], lw=2, label=f"{algo} (mean)"
    )
    ax.fill_between(
        steps[some],
        np.nanmin(r[:, some], 0),
        np.nanmax(r[:, some], 0),
        color=colors[algo],
        alpha=0.2,
    )
ax.set_xlabel("environment steps (per seed)")
ax.set_ylabel("return (mean of last 20 episodes)")
ax.set_title(f"Pendulum-v1, {NUM_SEEDS} seeds (band: min-max)")
ax.legend(loc="lower right")

ax = axes[0, 1]
for algo in ("npg", "trpo"):
    for i, k in enumerate(metrics[algo]["kl"]):
        ax.plot(
            steps,
            k,
            ".",
            ms=3,
            color=colors[algo],
            alpha=0.6,
            label=f"{algo}, measured KL" if i == 0 else None,
        )
ax.plot(steps, tr["max_kl"][0], color="k", ls="--", lw=1.2, label="bound (max_kl)")
ax.set_yscale("log")
ax.set_xlabel("environment steps (per seed)")
ax.set_ylabel(r"KL($\pi_{old}\,\|\,\pi_{new}$)")
ax.set_title("KL of each update against its bound")
ax.legend(loc="upper right", fontsize=8)

ax = axes[1, 0]
ratio_all = np.concatenate([ratio_tr, ratio_npg])
bins = np.geomspace(ratio_all[ratio_all > 0].min(), ratio_all.max() * 1.05, 45)
ax.hist(
    ratio_npg,
    bins=bins,
    color=colors["npg"],
    alpha=0.6,
    label=f"npg, full step ({np.mean(ratio_npg > 1 + 1e-6):.0%} above)",
)
ax.hist(
    ratio_tr,
    bins=bins,
    color=colors["trpo"],
    alpha=0.6,
    label=f"trpo, accepted step ({np.mean(ratio_tr > 1 + 1e-6):.0%} above)",
)
ax.axvline(1.0, color="k", ls="--", lw=1)
ax.set_xscale("log")
ticks = [t for t in (0.125, 0.25, 0.5, 1, 2, 4, 8, 16) if bins[0] <= t <= bins[-1]]
ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
ax.xaxis.set_minor_formatter(NullFormatter())
ax.set_xlabel("measured KL / bound")
ax.set_ylabel("updates (all seeds)")
ax.set_title("distribution of the measured KL")
ax.legend(fontsize=8)

ax = axes[1, 1]
accepted = tr["ls_accepted"].ravel() > 0.5
counts = np.bincount(tries[accepted].astype(int), minlength=cfg.ls_max_tries + 1)[1:]
labels = [str(k) for k in range(1, cfg.ls_max_tries + 1)] + ["none"]
bars = ax.bar(labels, np.append(counts, np.sum(~accepted)), color=colors["trpo"], alpha=0.8)
bars[-1].set_color("tab:red")
for b in bars:
    if b.get_height() > 0:
        ax.annotate(
            f"{int(b.get_height())}",
            (b.get_x() + b.get_width() / 2, b.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )
ax.set_xlabel("tries until a step was accepted (fraction of the full step: 0.8^(tries-1))")
ax.set_ylabel("updates (all seeds)")
ax.set_title(f"TRPO line search over {tries.size} updates")

fig.tight_layout()
fig.savefig(FIG_DIR / "03_pendulum_trpo_kl.png", dpi=110)
plt.show()

# %% [markdown]
# What to read in these plots:
#
# * The step is scaled so that its KL under the *damped* quadratic model is the bound.
#   The undamped model (`metrics["predicted_kl"]`) predicts a little less, and the
#   measured KL of most full steps is at or below the bound (the NPG histogram).
# * The quadratic model is local. Without a line search nothing stops a step whose actual
#   KL is well above the bound: some NPG steps overshoot, by several times in the worst
#   cases. TRPO's accepted steps never exceed the bound: it shrinks them by $0.8^k$ until
#   they fit.
# * Most TRPO updates take the full step (one try); the extra tries are spent on the
#   steps whose KL was underestimated and on those that would not lower the surrogate
#   loss. The KL of a step grows like the square of its length, so a step accepted at
#   the second try has about $0.8^2 \approx 0.64$ of the full step's KL. Each try costs a
#   forward pass over the batch, much less than the conjugate-gradient solve (see the
#   Benchmarks page of the docs).
# * Four seeds say little about the returns; the learning benchmarks compare the
#   algorithms properly.

# %%
print(f"notebook wall time: {time.perf_counter() - T0:.1f} s")
