"""Fisher-vector products against dense matrices built other ways (float64)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.flatten_util import ravel_pytree

import npgjax

from .conftest import make_problem, mlp

HEADS = ["categorical", "gaussian"]


def _jacobian_fisher(log_prob_fn, params, batch, w=None):
    """J^T diag(w) J with J from jax.jacrev of the vector of log-probs (not vmap(grad))."""
    flat, unravel = ravel_pytree(params)
    # Under jit: one compile instead of one per eager operation (most of the time here).
    J = jax.jit(jax.jacrev(lambda f: log_prob_fn(unravel(f), batch)))(flat)
    w = jnp.full(J.shape[0], 1.0 / J.shape[0]) if w is None else w
    return (J * w[:, None]).T @ J


def _kl_hessian(dist_fn, params, batch, mask=None):
    """jax.hessian of the mean KL(pi_old || pi_theta) at theta_old."""
    flat, unravel = ravel_pytree(params)
    old = dist_fn(params, batch)

    def mean_kl(f):
        kl = old.kl(dist_fn(unravel(f), batch))
        if mask is None:
            return kl.mean()
        return jnp.sum(kl * mask) / jnp.sum(mask)

    return jax.jit(jax.hessian(mean_kl))(flat)


def _apply(fvp, params, M, key=0):
    flat, unravel = ravel_pytree(params)
    flat_fvp = jax.jit(lambda v: ravel_pytree(fvp(unravel(v)))[0])
    for k in range(3):
        v = jax.random.normal(jax.random.PRNGKey(key + k), flat.shape, flat.dtype)
        out = flat_fvp(v)
        np.testing.assert_allclose(out, M @ v, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("head", HEADS)
def test_empirical_fvp_matches_dense_scores_and_jacobian(head, x64):
    params, batch, _, log_prob_fn = make_problem(head)
    F_scores = npgjax.dense_fisher(log_prob_fn, params, batch)
    F_jac = _jacobian_fisher(log_prob_fn, params, batch)
    np.testing.assert_allclose(F_scores, F_jac, rtol=1e-10, atol=1e-12)
    _apply(npgjax.fisher_vector_product(log_prob_fn, params, batch), params, F_jac)
    # Damping, a mask, and centring.
    mask = (jnp.arange(24) % 3 != 0).astype(jnp.float64)
    F_m = _jacobian_fisher(log_prob_fn, params, batch, mask / mask.sum())
    fvp = npgjax.fisher_vector_product(log_prob_fn, params, batch, mask=mask, damping=0.3)
    _apply(fvp, params, F_m + 0.3 * jnp.eye(F_m.shape[0]))
    S = npgjax.score_matrix(log_prob_fn, params, batch)
    F_c = jnp.cov(S.T, bias=True)
    _apply(npgjax.fisher_vector_product(log_prob_fn, params, batch, centered=True), params, F_c)
    np.testing.assert_allclose(
        npgjax.dense_fisher(log_prob_fn, params, batch, centered=True), F_c, atol=1e-12
    )


@pytest.mark.parametrize("head", HEADS)
def test_analytic_fvp_matches_kl_hessian(head, x64):
    params, batch, dist_fn, _ = make_problem(head)
    H = _kl_hessian(dist_fn, params, batch)
    _apply(npgjax.analytic_fisher_vector_product(dist_fn, params, batch), params, H)
    np.testing.assert_allclose(npgjax.dense_analytic_fisher(dist_fn, params, batch), H, atol=1e-10)
    mask = (jnp.arange(24) < 17).astype(jnp.float64)
    Hm = _kl_hessian(dist_fn, params, batch, mask)
    fvp = npgjax.analytic_fisher_vector_product(dist_fn, params, batch, mask=mask, damping=0.1)
    _apply(fvp, params, Hm + 0.1 * jnp.eye(Hm.shape[0]))


def test_analytic_is_expectation_of_empirical_over_actions(x64):
    """Enumerating every action, weighted by its probability, gives the analytic Fisher."""
    params, batch, dist_fn, log_prob_fn = make_problem("categorical", n=6)
    probs = dist_fn(params, batch).probs
    F = 0.0
    for a in range(probs.shape[1]):
        b = dict(batch, actions=jnp.full(6, a))
        F = F + _jacobian_fisher(log_prob_fn, params, b, probs[:, a] / 6)
    np.testing.assert_allclose(npgjax.dense_analytic_fisher(dist_fn, params, batch), F, atol=1e-12)


def test_trajectory_fisher_is_sum_of_per_step_fishers(x64):
    """Analytic trajectory Fisher = sum over t of per-step Fishers; and MC of the scores."""
    params, _, _, _ = make_problem("categorical", obs_dim=2, hidden=3, act_dim=2)
    T, N = 3, 4
    obs = jax.random.normal(jax.random.PRNGKey(5), (N, T, 2), jnp.float64)

    def dist_fn(p, b):
        return npgjax.Categorical(mlp(p["net"], b["obs"]))

    F_traj = npgjax.dense_analytic_fisher(dist_fn, params, {"obs": obs}, per="trajectory")
    per_t = sum(
        npgjax.dense_analytic_fisher(dist_fn, params, {"obs": obs[:, t]}) for t in range(T)
    )
    np.testing.assert_allclose(F_traj, per_t, atol=1e-12)
    # Monte Carlo: the empirical Fisher of trajectory log-probs (fixed states, sampled
    # actions) converges to the analytic trajectory Fisher.
    M = 4000
    reps = jnp.tile(obs, (M, 1, 1))
    acts = dist_fn(params, {"obs": reps}).sample(jax.random.PRNGKey(6))
    lp = npgjax.policy_log_prob_fn(lambda p, o: dist_fn(p, {"obs": o}), per="trajectory")
    F_emp = npgjax.dense_fisher(lp, params, {"obs": reps, "actions": acts})
    err = jnp.linalg.norm(F_emp - F_traj) / jnp.linalg.norm(F_traj)
    assert err < 0.1


def test_fvp_under_jit_and_fisher_batch_can_differ(x64):
    params, batch, dist_fn, log_prob_fn = make_problem("gaussian")
    sub = jax.tree.map(lambda x: x[:8], batch)
    v = jax.tree.map(jnp.ones_like, params)

    @jax.jit
    def run(p, b, v):
        return npgjax.fisher_vector_product(log_prob_fn, p, b, damping=0.01)(v)

    eager = npgjax.fisher_vector_product(log_prob_fn, params, sub, damping=0.01)(v)
    jitted = run(params, sub, v)
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10)
    F_sub = _jacobian_fisher(log_prob_fn, params, sub) + 0.01 * jnp.eye(
        ravel_pytree(params)[0].size
    )
    np.testing.assert_allclose(ravel_pytree(jitted)[0], F_sub @ ravel_pytree(v)[0], rtol=1e-9)


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from(HEADS))
def test_fvp_symmetric_and_psd(seed, head):
    with jax.enable_x64(True):
        params, batch, dist_fn, log_prob_fn = make_problem(head, key=seed % 7, n=10)
        flat, unravel = ravel_pytree(params)
        u = jax.random.normal(jax.random.PRNGKey(seed), flat.shape, flat.dtype)
        v = jax.random.normal(jax.random.PRNGKey(seed + 1), flat.shape, flat.dtype)
        for fvp in (
            npgjax.fisher_vector_product(log_prob_fn, params, batch),
            npgjax.analytic_fisher_vector_product(dist_fn, params, batch),
        ):
            Fu, Fv = ravel_pytree(fvp(unravel(u)))[0], ravel_pytree(fvp(unravel(v)))[0]
            assert float(u @ Fv) == pytest.approx(float(v @ Fu), rel=1e-9, abs=1e-12)
            assert float(v @ Fv) >= -1e-12


def test_bad_input_errors():
    params, batch, dist_fn, log_prob_fn = make_problem("categorical", dtype=jnp.float32)
    fvp = npgjax.fisher_vector_product(log_prob_fn, params, batch)
    with pytest.raises(ValueError, match="pytree mismatch"):
        fvp({"net": params["net"][:1]})
    bad = jax.tree.map(lambda x: x, params)
    bad["net"][0]["w"] = jnp.zeros((2, 2))
    with pytest.raises(ValueError, match="shape mismatch"):
        fvp(bad)
    with pytest.raises(ValueError, match="damping"):
        npgjax.fisher_vector_product(log_prob_fn, params, batch, damping=-1.0)
    with pytest.raises(ValueError, match="leading axis"):
        npgjax.fisher_vector_product(log_prob_fn, params, dict(batch, extra=jnp.ones(3)))
    with pytest.raises(ValueError, match="mask"):
        npgjax.fisher_vector_product(log_prob_fn, params, batch, mask=jnp.ones(3))
    with pytest.raises(ValueError, match="mask"):
        npgjax.analytic_fisher_vector_product(dist_fn, params, batch, mask=jnp.ones(3))
    with pytest.raises(ValueError, match="per"):
        npgjax.analytic_fisher(dist_fn, per="episode")
