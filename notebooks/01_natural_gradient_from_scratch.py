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
# # 1. The natural gradient from scratch
#
# A policy with two parameters is small enough to draw. We take a one-dimensional
# Gaussian policy $\pi(a) = \mathcal N(a; \mu, \sigma^2)$ with no state, a quadratic
# reward $r(a) = -(a - a^\star)^2$, and the objective
#
# $$
# J = \mathbb E_{a \sim \pi}[r(a)] = -\big((\mu - a^\star)^2 + \sigma^2\big),
# $$
#
# maximised by $\mu = a^\star$, $\sigma \to 0$. We compute, with npgjax and by hand:
#
# 1. the score function and the two Fisher estimators, from samples and in closed form;
# 2. the vanilla and the natural gradient fields;
# 3. the same gradient ascent run under three parametrisations of the same policies:
#    the natural-gradient paths coincide in policy space, the vanilla ones do not.

# %%
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

import npgjax

QUICK = os.environ.get("NPGJAX_NOTEBOOK_QUICK", "0") not in ("", "0")
ROOT = Path.cwd() if (Path.cwd() / "docs").is_dir() else Path.cwd().parent
FIG_DIR = ROOT / "docs" / "figures"
FIG_DIR.mkdir(parents=True, exist_ok=True)
T0 = time.perf_counter()

A_STAR = 1.0  # the best action


def objective(mu, sigma):
    """J(mu, sigma) = E[-(a - a*)^2] for a ~ N(mu, sigma^2), in closed form."""
    return -((mu - A_STAR) ** 2 + sigma**2)


# %% [markdown]
# ## Three parametrisations of the same policies
#
# The same set of Gaussians can be described by different parameter vectors. We use
#
# | name | parameters $\theta$ | policy |
# | --- | --- | --- |
# | `log_std` | $(\mu, \log\sigma)$ | what `npgjax.DiagGaussian` takes |
# | `std` | $(\mu, \sigma)$ | a non-linear change of coordinates |
# | `scaled` | $(10\,\mu, \log\sigma)$ | a linear one: $\mu$ measured in other units |
#
# Each parametrisation is a `dist_fn(params, batch) -> distribution`, the form
# npgjax's analytic Fisher takes. There is no state, so the "batch" only carries the
# number of samples.


# %%
def to_mu_sigma(name, theta):
    """Map a parameter vector of a parametrisation to (mu, sigma)."""
    if name == "log_std":
        return theta[0], jnp.exp(theta[1])
    if name == "std":
        return theta[0], theta[1]
    if name == "scaled":
        return theta[0] / 10.0, jnp.exp(theta[1])
    raise ValueError(name)


def from_mu_sigma(name, mu, sigma):
    if name == "log_std":
        return jnp.array([mu, jnp.log(sigma)])
    if name == "std":
        return jnp.array([mu, sigma])
    if name == "scaled":
        return jnp.array([10.0 * mu, jnp.log(sigma)])
    raise ValueError(name)


def make_policy(name):
    def policy(theta, obs):
        """A state-free Gaussian, batched over the leading axis of obs ([N, 1])."""
        mu, sigma = to_mu_sigma(name, theta)
        return npgjax.DiagGaussian(mu + 0.0 * obs, jnp.log(sigma) + 0.0 * obs)

    return policy


PARAMS = ("log_std", "std", "scaled")
policies = {name: make_policy(name) for name in PARAMS}  # policy(params, obs)
# The analytic Fisher takes dist_fn(params, batch); the empirical one a log_prob_fn.
dist_fns = {name: (lambda p, b, f=policies[name]: f(p, b["obs"])) for name in PARAMS}
one_state = {"obs": jnp.zeros((1, 1))}

# %% [markdown]
# ## Scores and the two Fisher estimators
#
# The **score** of a sample is $s(a) = \nabla_\theta \log \pi_\theta(a)$. In
# $(\mu, \log\sigma)$, with $z = (a - \mu)/\sigma$,
#
# $$
# s(a) = \big(z / \sigma,\; z^2 - 1\big).
# $$
#
# Scores have mean zero, and the policy gradient is the mean of reward times score
# (the likelihood-ratio identity):
# $\nabla_\theta J = \mathbb E[r(a)\, s(a)]$.
#
# The **Fisher matrix** is the covariance of the scores,
# $F = \mathbb E[s s^\top]$. npgjax has two estimators of it:
#
# * the **empirical** Fisher $\hat F = \frac1N \sum_i s(a_i) s(a_i)^\top$ over sampled
#   actions (`npgjax.dense_fisher`, or the matrix-free `npgjax.fisher_vector_product`);
# * the **analytic** Fisher, which takes the expectation over actions in closed form
#   (`npgjax.dense_analytic_fisher`, `npgjax.analytic_fisher_vector_product`). For a
#   Gaussian in $(\mu, \log\sigma)$ it is $\mathrm{diag}(1/\sigma^2, 2)$.
#
# Both are checked below against the closed forms at one point, with $N$ samples.

# %%
theta0 = from_mu_sigma("log_std", -1.0, 1.5)
mu0, sigma0 = to_mu_sigma("log_std", theta0)
n_samples = 20_000 if QUICK else 100_000
actions = mu0 + sigma0 * jax.random.normal(jax.random.PRNGKey(0), (n_samples, 1))
batch = {"obs": jnp.zeros((n_samples, 1)), "actions": actions}

log_prob_fn = npgjax.policy_log_prob_fn(policies["log_std"])  # per="step": one sample each
scores = npgjax.score_matrix(log_prob_fn, theta0, batch)  # [N, 2]
rewards = -((actions[:, 0] - A_STAR) ** 2)

grad_mc = scores.T @ rewards / n_samples
grad_mc_baseline = scores.T @ (rewards - rewards.mean()) / n_samples
grad_exact = jax.grad(lambda t: objective(*to_mu_sigma("log_std", t)))(theta0)

F_empirical = npgjax.dense_fisher(log_prob_fn, theta0, batch)
F_analytic = npgjax.dense_analytic_fisher(dist_fns["log_std"], theta0, one_state)
F_closed_form = jnp.diag(jnp.array([1 / sigma0**2, 2.0]))

np.set_printoptions(precision=4, suppress=True)
print("mean score (should be ~0):        ", scores.mean(0))
print("gradient, score-function estimate:", grad_mc)
print("  ... with a mean-reward baseline: ", grad_mc_baseline)
print("gradient, exact:                   ", grad_exact)
print("empirical Fisher:\n", F_empirical)
print("analytic Fisher:\n", F_analytic)
print("closed form diag(1/sigma^2, 2):\n", F_closed_form)
assert jnp.allclose(F_analytic, F_closed_form, rtol=1e-5)
# Monte Carlo error is O(1/sqrt(N)): allow a few standard errors.
assert jnp.allclose(F_empirical, F_analytic, atol=8 * 2.0 / np.sqrt(n_samples))

# %% [markdown]
# The empirical Fisher converges to the analytic one at rate $1/\sqrt N$; the analytic
# one is exact for the visited states at any $N$. The analytic Fisher needs a
# distribution with a closed form (npgjax's `Categorical` and `DiagGaussian`, or any
# distribution with a `kl` method), the empirical one only needs log-probabilities.
#
# The Fisher also transforms like a metric. If $\phi = \phi(\theta)$ with Jacobian
# $J_{\phi} = \partial\theta / \partial\phi$, then $F_\phi = J_\phi^\top F_\theta J_\phi$:
# here is the check for the $(\mu, \sigma)$ parametrisation.

# %%
phi0 = from_mu_sigma("std", mu0, sigma0)
F_std = npgjax.dense_analytic_fisher(dist_fns["std"], phi0, one_state)
jac = jax.jacobian(lambda p: from_mu_sigma("log_std", *to_mu_sigma("std", p)))(phi0)
print("Fisher in (mu, sigma):\n", F_std)
print("J^T F_(mu, log sigma) J:\n", jac.T @ F_analytic @ jac)
assert jnp.allclose(F_std, jac.T @ F_analytic @ jac, rtol=1e-5)

# %% [markdown]
# ## Vanilla and natural gradient fields
#
# The natural gradient is $\tilde g = F^{-1} g$: the direction of steepest ascent
# when the length of a step is measured by the KL divergence it causes,
# $\mathrm{KL}(\pi_\theta \,\|\, \pi_{\theta + d}) \approx \tfrac12 d^\top F d$,
# rather than by $\|d\|$. In $(\mu, \log\sigma)$:
#
# $$
# g = \big(-2(\mu - a^\star),\; -2\sigma^2\big), \qquad
# \tilde g = F^{-1} g = \big(-2\sigma^2(\mu - a^\star),\; -\sigma^2\big).
# $$
#
# The vanilla gradient is large in $\mu$ whatever $\sigma$ is, although a move of
# $\mu$ changes a narrow Gaussian much more than a wide one; the natural gradient
# scales the $\mu$ component by $\sigma^2$, which is the right unit.
#
# We compute $\tilde g$ with `npgjax.precondition_by_fisher` (analytic Fisher, a
# Cholesky solve since $P = 2$, no damping), vmapped over a grid.

# %%
precondition = npgjax.precondition_by_fisher(
    dist_fn=dist_fns["log_std"], damping=0.0, solver=npgjax.cholesky_solve
)


def both_gradients(theta):
    g = jax.grad(lambda t: objective(*to_mu_sigma("log_std", t)))(theta)
    nat, _ = precondition.update(g, precondition.init(theta), theta, batch=one_state)
    return g, nat


mus = jnp.linspace(-2.0, 3.0, 17)
log_sigmas = jnp.linspace(-1.5, 1.0, 11)
grid = jnp.stack(jnp.meshgrid(mus, log_sigmas), -1).reshape(-1, 2)
vanilla_field, natural_field = jax.vmap(both_gradients)(grid)

# The closed form above, as a check of the transform.
sig2 = jnp.exp(2 * grid[:, 1])
closed = jnp.stack([-2 * sig2 * (grid[:, 0] - A_STAR), -sig2], -1)
assert jnp.allclose(natural_field, closed, rtol=1e-4, atol=1e-5)

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 4.3), sharey=True)
mm, ll = np.meshgrid(np.linspace(-2.2, 3.2, 200), np.linspace(-1.7, 1.2, 200))
jj = objective(mm, np.exp(ll))
for ax, field, title in zip(
    axes,
    (vanilla_field, natural_field),
    ("vanilla gradient $g$", "natural gradient $F^{-1}g$"),
    strict=True,
):
    ax.contourf(mm, ll, jj, levels=25, cmap="Greys_r", alpha=0.55)
    ax.contour(mm, ll, jj, levels=12, colors="k", linewidths=0.3, alpha=0.5)
    f = np.asarray(field)
    norm = np.linalg.norm(f, axis=1, keepdims=True)
    unit = f / np.maximum(norm, 1e-12)
    q = ax.quiver(
        grid[:, 0],
        grid[:, 1],
        unit[:, 0],
        unit[:, 1],
        np.log10(norm[:, 0]),
        cmap="viridis",
        angles="xy",
        scale=28,
        width=0.004,
    )
    ax.plot([A_STAR], [-1.5], marker="*", color="crimson", ms=12, clip_on=False)
    ax.set_title(title)
    ax.set_xlabel(r"$\mu$")
    fig.colorbar(q, ax=ax, fraction=0.046, pad=0.02)
axes[0].set_ylabel(r"$\log\sigma$")
fig.suptitle(
    r"Gaussian policy, $J(\mu,\sigma) = -(\mu - a^\star)^2 - \sigma^2$, "
    r"in $(\mu, \log\sigma)$ coordinates ($a^\star = 1$, star)"
    "\nunit arrows, colour = log10 of the length"
)
fig.tight_layout()
fig.savefig(FIG_DIR / "01_gradient_fields.png", dpi=110)
plt.show()

# %% [markdown]
# On the left the arrows point mostly along $\mu$ everywhere: at small $\sigma$ they
# would make huge changes to the policy. On the right the direction depends on
# $\sigma$: when the Gaussian is wide, moving the mean is cheap (in KL) and the
# natural gradient does that first; when it is narrow it shrinks $\sigma$ slowly.
#
# ## Reparametrisation invariance
#
# Take a differentiable reparametrisation $\theta = \theta(\phi)$ with Jacobian
# $J = \partial\theta/\partial\phi$. Gradients transform with $J^\top$ and the Fisher
# with $J^\top \cdot J$:
#
# $$
# g_\phi = J^\top g_\theta, \qquad F_\phi = J^\top F_\theta J
# \quad\Longrightarrow\quad
# J\, F_\phi^{-1} g_\phi = J J^{-1} F_\theta^{-1} J^{-\top} J^\top g_\theta
#   = F_\theta^{-1} g_\theta .
# $$
#
# So the natural-gradient step $d\phi = \eta F_\phi^{-1} g_\phi$ moves $\theta$ by
# $J\,d\phi = \eta F_\theta^{-1} g_\theta$: the same change of policy, whatever the
# coordinates. The vanilla step moves $\theta$ by $\eta J J^\top g_\theta$, which
# depends on $J$. (The argument is to first order in $\eta$: discrete paths agree up to
# $O(\eta)$, the continuous flows exactly.)
#
# We run 600 steps of gradient ascent from the same policy in each parametrisation,
# with `optax.sgd` for the vanilla gradient and `npgjax.npg(dist_fn=..., learning_rate=...)`
# for the natural one, and map every iterate back to $(\mu, \sigma)$. npg minimises,
# so we feed it the gradient of $-J$; damping is set to 0 because a damping term
# $\lambda I$ is *not* invariant (it is an identity in the current coordinates).

# %%
N_STEPS = 300 if QUICK else 600
LR = {"vanilla": 0.005, "natural": 0.005}
MU0, SIGMA0 = -2.0, 1.5


def run(name, method):
    loss = lambda p: -objective(*to_mu_sigma(name, p))
    if method == "vanilla":
        tx = optax.sgd(LR["vanilla"])
    else:
        tx = npgjax.npg(
            dist_fn=dist_fns[name], learning_rate=LR["natural"], damping=0.0, cg_iters=2
        )
    p = from_mu_sigma(name, MU0, SIGMA0)

    def step(carry, _):
        p, s = carry
        g = jax.grad(loss)(p)
        u, s = tx.update(g, s, p, batch=one_state)
        p = optax.apply_updates(p, u)
        return (p, s), jnp.stack(to_mu_sigma(name, p))

    _, path = jax.lax.scan(step, (p, tx.init(p)), None, length=N_STEPS)
    start = jnp.array([[MU0, SIGMA0]])
    return np.asarray(jnp.concatenate([start, path]))


paths = {(name, method): run(name, method) for name in PARAMS for method in ("vanilla", "natural")}


def max_gap(method):
    ref = paths[("log_std", method)]
    return max(np.abs(paths[(n, method)] - ref).max() for n in PARAMS)


gap_vanilla, gap_natural = max_gap("vanilla"), max_gap("natural")
print(f"largest gap between the paths in (mu, sigma), vanilla: {gap_vanilla:.3f}")
print(f"largest gap between the paths in (mu, sigma), natural: {gap_natural:.2e}")
assert gap_natural < 0.02 < 0.5 < gap_vanilla

# %%
colors = {"log_std": "tab:blue", "std": "tab:orange", "scaled": "tab:green"}
labels = {
    "log_std": r"$(\mu, \log\sigma)$",
    "std": r"$(\mu, \sigma)$",
    "scaled": r"$(10\mu, \log\sigma)$",
}
fig, axes = plt.subplots(1, 3, figsize=(14, 4.3))
mm, ss = np.meshgrid(np.linspace(-2.3, 1.5, 200), np.linspace(0.01, 1.6, 200))
for ax, method in zip(axes[:2], ("vanilla", "natural"), strict=True):
    ax.contour(mm, ss, objective(mm, ss), levels=15, colors="k", linewidths=0.3, alpha=0.5)
    for i, name in enumerate(PARAMS):
        path = paths[(name, method)]
        ax.plot(
            path[:, 0],
            path[:, 1],
            color=colors[name],
            lw=3.5 - 1.1 * i,
            ls="-" if i == 0 else ("--" if i == 1 else ":"),
            label=labels[name],
        )
        ax.plot(path[-1, 0], path[-1, 1], "o", color=colors[name], ms=5)
    ax.plot([MU0], [SIGMA0], "ks", ms=6)
    ax.plot([A_STAR], [0.0], marker="*", color="crimson", ms=12, clip_on=False)
    gap = gap_vanilla if method == "vanilla" else gap_natural
    ax.set_title(f"{method} gradient ascent\nlargest gap between paths: {gap:.2g}")
    ax.set_xlabel(r"$\mu$")
    ax.set_ylabel(r"$\sigma$")
    ax.set_xlim(-2.3, 1.5)
    ax.set_ylim(0, 1.6)
    ax.legend(title="parametrisation", loc="upper right", fontsize=8)
for name in PARAMS:
    for method, ls in (("vanilla", "--"), ("natural", "-")):
        path = paths[(name, method)]
        axes[2].plot(
            -objective(path[:, 0], path[:, 1]),
            ls=ls,
            color=colors[name],
            label=f"{method}, {labels[name]}",
        )
axes[2].set_yscale("log")
axes[2].set_xlabel("step")
axes[2].set_ylabel(r"$-J$ (lower is better)")
axes[2].set_title("objective along each path")
axes[2].legend(fontsize=7, ncol=2)
fig.suptitle(f"The same {N_STEPS} steps (learning rate {LR['natural']}) in three parametrisations")
fig.tight_layout()
fig.savefig(FIG_DIR / "01_reparametrisation.png", dpi=110)
plt.show()

# %% [markdown]
# The three natural-gradient paths lie on top of each other; the three vanilla paths go
# three different ways. In $(\mu, \sigma)$ the vanilla gradient shrinks $\sigma$
# exponentially and fast, in $(\mu, \log\sigma)$ more slowly, and in the `scaled`
# coordinates $\mu$ barely moves: its gradient is divided by 10 and so is its step, a
# factor 100 in all. With the natural gradient the choice of coordinates (or units)
# changes nothing, so a step size means the same thing for every network: this is what
# makes a KL bound like `max_kl` a portable hyperparameter.
#
# The natural gradient is slower here at the end: as $\sigma \to 0$ each unit of
# progress in $J$ costs more and more KL. With a KL-bounded step
# (`npgjax.npg(dist_fn=..., max_kl=eps)`) each step would instead move the policy by a
# fixed $\mathrm{KL} = \epsilon$.

# %%
print(f"notebook wall time: {time.perf_counter() - T0:.1f} s")
