"""Exact sample-space natural gradient against dense solves built in NumPy, in float64.

The references take the ``N x P`` score matrix (``vmap`` of ``grad``) and build the
Fisher, its centring and its weights in NumPy from the definitions; the solver's
reported residual comes from a jvp/vjp Fisher-vector product, a second route. Problems
are built with NumPy and every solve is jitted once per option set, to keep compiling
(which dominates here) to a few seconds.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import npgjax
from npgjax.sample_space import sample_space_natural_gradient as ssng

from .conftest import mlp


@functools.cache
def policy_problem(per="trajectory", n=12, hidden=6, key=0, dtype="float64"):
    """An MLP policy, per-trajectory categorical (ragged time mask) or per-step Gaussian."""
    rng = np.random.default_rng(key)
    obs_dim, act_dim, t = 3, 2, 5
    sizes = [(obs_dim, hidden), (hidden, act_dim)]
    net = [
        {"w": rng.normal(size=s) / np.sqrt(s[0]), "b": 0.1 * rng.normal(size=s[1])} for s in sizes
    ]
    params = {"net": net}
    if per == "trajectory":
        lengths = 1 + np.arange(n) % t
        batch = {
            "obs": rng.normal(size=(n, t, obs_dim)),
            "actions": rng.integers(0, act_dim, size=(n, t)),
            "mask": (np.arange(t)[None, :] < lengths[:, None]).astype(float),
        }

        def policy(p, obs):
            return npgjax.Categorical(mlp(p["net"], obs))

    else:
        params["log_std"] = 0.3 * rng.normal(size=act_dim)
        batch = {"obs": rng.normal(size=(n, obs_dim)), "actions": rng.normal(size=(n, act_dim))}

        def policy(p, obs):
            return npgjax.DiagGaussian(mlp(p["net"], obs), p["log_std"])

    cast = lambda a: jnp.asarray(a, dtype) if a.dtype == np.float64 else jnp.asarray(a)
    params, batch = jax.tree.map(cast, params), jax.tree.map(cast, batch)
    return params, batch, npgjax.policy_log_prob_fn(policy, per=per)


@functools.cache
def jitted(lp, **options):
    """One compiled solve per (log_prob_fn, options); the mask (or None) is an argument."""
    return jax.jit(lambda p, b, g, lam, mask: ssng(lp, p, b, g, damping=lam, mask=mask, **options))


@functools.cache
def scores(lp, key=0, **kwargs):
    params, batch, _ = policy_problem(key=key, **kwargs)
    return np.asarray(jax.jit(npgjax.score_matrix, static_argnums=0)(lp, params, batch))


def numpy_fisher(S, mask=None, centered=False):
    """F = S^T (W - w w^T) S (centred) or S^T W S, w = m / max(sum m, 1), as documented."""
    m = np.ones(len(S)) if mask is None else np.asarray(mask, np.float64)
    w = m / max(m.sum(), 1.0)
    inner = np.diag(w) - (np.outer(w, w) if centered else 0.0)
    return S.T @ inner @ S


def random_like(tree, key=1):
    flat, unravel = ravel_pytree(tree)
    return unravel(jnp.asarray(np.random.default_rng(key).normal(size=flat.shape), flat.dtype))


def dense_solve(A, g):
    """A^-1 g by NumPy's Cholesky."""
    L = np.linalg.cholesky(np.asarray(A, np.float64))
    return np.linalg.solve(L.T, np.linalg.solve(L, np.asarray(g, np.float64)))


def flat(tree):
    return np.asarray(ravel_pytree(tree)[0])


@pytest.mark.parametrize("per", ["step", "trajectory"])
def test_matches_dense_cholesky_damped(x64, per):
    kw = {"per": "step", "n": 16} if per == "step" else {}  # {}: shares compiled solves
    params, batch, lp = policy_problem(**kw)
    S = scores(lp, **kw)
    n = S.shape[0]
    assert S.shape[0] < S.shape[1]  # N < P: the Woodbury (sample-space) branch
    g, lam = random_like(params), 1e-2
    for centered in (False, True):
        solve = jitted(lp, centered=centered)
        for mask in (None, (np.arange(n) % 3 != 0).astype(float), np.linspace(0.0, 0.1, n)):
            A = numpy_fisher(S, mask, centered) + lam * np.eye(S.shape[1])
            ref = dense_solve(A, flat(g))
            m = None if mask is None else jnp.asarray(mask)
            x, info = solve(params, batch, g, lam, m)
            np.testing.assert_allclose(flat(x), ref, rtol=1e-8, atol=1e-9 * np.abs(ref).max())
            res = np.linalg.norm(flat(g) - A @ flat(x))
            assert abs(float(info.residual_norm) - res) < 1e-10 * np.linalg.norm(flat(g))
            assert float(info.residual_norm) < 1e-10 * np.linalg.norm(flat(g))
            assert bool(info.converged) and int(info.iterations) == 0


def test_grads_outside_the_span_of_the_scores(x64):
    params, batch, lp = policy_problem()
    S = scores(lp)
    g0 = flat(random_like(params, key=3))
    # Remove the row space of S: then (F + lam I) g_perp = lam g_perp, so x = g_perp / lam.
    Q, _ = np.linalg.qr(S.T)
    g_perp = g0 - Q @ (Q.T @ g0)
    assert np.linalg.norm(g_perp) > 0.5 * np.linalg.norm(g0)
    unravel, lam, solve = ravel_pytree(params)[1], 0.05, jitted(lp)
    x, _ = solve(params, batch, unravel(jnp.asarray(g_perp)), lam, None)
    np.testing.assert_allclose(flat(x), g_perp / lam, rtol=1e-9, atol=1e-12)
    # Both components at once, against the dense solve.
    x, _ = solve(params, batch, unravel(jnp.asarray(g0)), lam, None)
    ref = dense_solve(numpy_fisher(S) + lam * np.eye(S.shape[1]), g0)
    np.testing.assert_allclose(flat(x), ref, rtol=1e-8, atol=1e-10)


def test_undamped_full_rank_and_singular_error(x64):
    # N=200 > P=26; a Gaussian head (a categorical one has a null direction).
    params, batch, lp = policy_problem("step", n=200, hidden=4)
    S = scores(lp, per="step", n=200, hidden=4)
    F = numpy_fisher(S)
    assert np.linalg.matrix_rank(F) == F.shape[0] < S.shape[0]
    g = random_like(params)
    x, info = jitted(lp)(params, batch, g, 0.0, None)
    np.testing.assert_allclose(flat(x), dense_solve(F, flat(g)), rtol=1e-7)
    assert bool(info.converged)
    x, _ = jitted(lp, centered=True)(params, batch, g, 0.3, None)
    ref = dense_solve(numpy_fisher(S, centered=True) + 0.3 * np.eye(F.shape[0]), flat(g))
    np.testing.assert_allclose(flat(x), ref, rtol=1e-9)
    # N < P without damping: F is singular.
    params, batch, lp = policy_problem()
    with pytest.raises(ValueError, match="singular"):
        ssng(lp, params, batch, random_like(params), damping=0.0)


def test_jit_vmap_and_chunking(x64):
    params, batch, lp = policy_problem()
    g = random_like(params)
    solve = jitted(lp, centered=True)
    # Chunks of 5 for 12 trajectories (the last chunk padded), vmapped over three
    # problems (other seeds, the same log_prob_fn), against the unchunked unbatched solves.
    probs = [policy_problem(key=k) for k in range(3)]
    stack = lambda trees: jax.tree.map(lambda *a: jnp.stack(a), *trees)
    ps, bs = stack([p for p, _, _ in probs]), stack([b for _, b, _ in probs])
    gs = stack([random_like(p, k) for k, (p, _, _) in enumerate(probs)])
    chunked = jitted(lp, centered=True, chunk_size=5)
    xs, infos = jax.jit(jax.vmap(chunked, in_axes=(0, 0, 0, None, None)))(ps, bs, gs, 0.01, None)
    for k, (p, b, _) in enumerate(probs):
        xk, _ = solve(p, b, random_like(p, k), 0.01, None)
        np.testing.assert_allclose(flat(jax.tree.map(lambda a: a[k], xs)), flat(xk), rtol=1e-10)
    assert bool(jnp.all(infos.converged))
    # A traced damping of 0 with N < P: a zero solution flagged unconverged, never NaN.
    x, info = solve(params, batch, g, 0.0, None)
    assert np.all(flat(x) == 0.0) and not bool(info.converged)
    np.testing.assert_allclose(float(info.residual_norm), np.linalg.norm(flat(g)))


def test_float32(full_f32_matmuls):
    params, batch, lp = policy_problem(dtype="float32")
    g = random_like(params)
    x, info = jitted(lp)(params, batch, g, 1e-2, None)
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(x))
    with jax.enable_x64(True):
        p64, b64, lp64 = policy_problem()
        ref = flat(jitted(lp64)(p64, b64, random_like(p64), 1e-2, None)[0])
    np.testing.assert_allclose(flat(x), ref, rtol=1e-3, atol=1e-4 * np.abs(ref).max())
    assert bool(info.converged)
    assert float(info.residual_norm) < 1e-4 * np.linalg.norm(flat(g))


def test_bad_inputs():
    params, batch, lp = policy_problem(dtype="float32")
    g = random_like(params)
    with pytest.raises(ValueError, match=r"shape \[N\]"):
        ssng(lambda p, b: lp(p, b).sum(), params, batch, g, damping=0.1)
    with pytest.raises(ValueError, match=r"shape \[N\]"):
        ssng(lambda p, b: jnp.outer(lp(p, b), lp(p, b)), params, batch, g, damping=0.1)
    with pytest.raises(ValueError, match="grads has structure"):
        ssng(lp, params, batch, g["net"], damping=0.1)
    with pytest.raises(ValueError, match="shape mismatch"):
        ssng(lp, params, batch, jax.tree.map(lambda a: a[..., :1], g), damping=0.1)
    with pytest.raises(ValueError, match="damping must be"):
        ssng(lp, params, batch, g, damping=-1.0)
    with pytest.raises(ValueError, match="damping must be a scalar"):
        ssng(lp, params, batch, g, damping=jnp.ones(2))
    with pytest.raises(ValueError, match="mask has shape"):
        ssng(lp, params, batch, g, damping=0.1, mask=jnp.ones(3))
    with pytest.raises(ValueError, match="non-negative"):
        ssng(lp, params, batch, g, damping=0.1, mask=-jnp.ones(12))
    with pytest.raises(ValueError, match="leading axis"):
        ssng(lp, params, dict(batch, extra=jnp.ones(3)), g, damping=0.1)


def test_precondition_by_fisher_sample_space_matches_dense(x64):
    """``solver="sample_space"`` inside the optax transform: the KL-scaled step of the
    dense solve, with a mask, under jit; the step's model KL is ``max_kl``."""
    params, batch, lp = policy_problem()
    S = scores(lp)
    n, lam, eps = S.shape[0], 1e-2, 0.02
    mask = jnp.asarray((np.arange(n) % 4 != 0).astype(float))
    tx = npgjax.precondition_by_fisher(lp, solver="sample_space", max_kl=eps, damping=lam,
                                       chunk_size=5)
    g = random_like(params)
    out, state = jax.jit(lambda g, p, m: tx.update(g, tx.init(p), p, batch=batch,
                                                   fisher_mask=m))(g, params, mask)
    A = numpy_fisher(S, np.asarray(mask)) + lam * np.eye(S.shape[1])
    x = dense_solve(A, flat(g))
    ref = np.sqrt(2 * eps / (flat(g) @ x)) * x
    np.testing.assert_allclose(flat(out), ref, rtol=1e-8, atol=1e-10)
    assert int(state.status) == 0 and int(state.cg_iterations) == 0
    d = flat(out)
    np.testing.assert_allclose(float(state.predicted_kl), 0.5 * d @ (A - lam * np.eye(len(d))) @ d,
                               rtol=1e-6)
    # A NaN gradient under jit: a zero update and a flag, never NaN parameters.
    bad = jax.tree.map(lambda a: a.at[(0,) * a.ndim].set(jnp.nan), g)
    out, state = jax.jit(lambda g, p: tx.update(g, tx.init(p), p, batch=batch))(bad, params)
    assert all(bool(jnp.all(a == 0)) for a in jax.tree.leaves(out))
    assert bool(state.skipped) and int(state.status) & int(npgjax.Status.NONFINITE_GRADIENT)


def test_sample_space_solver_bad_input():
    params, batch, lp = policy_problem(dtype="float32")
    dist_fn = lambda p, b: npgjax.Categorical(jnp.zeros(3))
    with pytest.raises(ValueError, match=r"sample_space.*needs log_prob_fn"):
        npgjax.precondition_by_fisher(dist_fn=dist_fn, solver="sample_space")
    with pytest.raises(ValueError, match="unknown solver 'qr'"):
        npgjax.precondition_by_fisher(lp, solver="qr")
    with pytest.raises(ValueError, match="chunk_size is only used"):
        npgjax.precondition_by_fisher(lp, chunk_size=4)
    tx = npgjax.npg(lp, solver="sample_space", damping=0.0)
    with pytest.raises(ValueError, match="singular"):
        tx.update(random_like(params), tx.init(params), params, batch=batch)


def test_rl_option_matches_long_cg(full_f32_matmuls):
    """The RL layer's ``solver="sample_space"`` (empirical Fisher, MLP): the same training
    as CG run to convergence; unsupported Fisher sources and networks are errors."""
    from npgjax.rl import get_config, make_train

    with pytest.raises(ValueError, match="fisher='empirical'"):
        get_config("CartPole-v1", "npg", solver="sample_space")
    with pytest.raises(ValueError, match="fisher='empirical'"):
        get_config("CartPole-v1", "trpo", solver="sample_space", fisher="trajectory")
    with pytest.raises(ValueError, match="recurrent"):
        make_train(get_config("CartPole-v1", "npg", solver="sample_space", fisher="empirical",
                              network="gru"))
    cfg = get_config("CartPole-v1", "npg", fisher="empirical", solver="sample_space",
                     num_envs=4, num_steps=16, total_timesteps=64 * 3, eval_every=0)
    s1, m1 = jax.jit(make_train(cfg))(jax.random.PRNGKey(0))
    s2, _ = jax.jit(make_train(cfg.replace(solver="cg", cg_iters=200)))(jax.random.PRNGKey(0))
    assert np.all(np.asarray(m1["cg_iterations"]) == 0)
    for a, b in zip(jax.tree.leaves(s1.pi_params), jax.tree.leaves(s2.pi_params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
