"""CG and the dense solver against numpy, with their diagnostics."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import npgjax


def _spd(n, seed, cond=50.0):
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    eig = np.geomspace(1.0, cond, n)
    return Q @ np.diag(eig) @ Q.T, rng.normal(size=n)


def test_cg_matches_dense_solve_on_pytrees(x64):
    A, b = _spd(7, 0)
    # Split the 7-vector into a pytree of two leaves.
    def to_tree(v):
        return {"a": v[:3], "b": v[3:].reshape(2, 2)}

    def to_vec(t):
        return jnp.concatenate([t["a"], t["b"].reshape(-1)])

    A = jnp.asarray(A)
    x, info = npgjax.conjugate_gradient(
        lambda t: to_tree(A @ to_vec(t)), to_tree(jnp.asarray(b)), max_iters=50, tol=1e-12
    )
    np.testing.assert_allclose(to_vec(x), np.linalg.solve(A, b), rtol=1e-9)
    assert 1 <= int(info.iterations) <= 7 + 1
    true_res = np.linalg.norm(b - np.asarray(A) @ np.asarray(to_vec(x)))
    assert float(info.residual_norm) == pytest.approx(true_res, abs=1e-9)
    assert bool(info.converged)


def test_cg_truncated_reports_iterations_residual_and_galerkin(x64):
    A, b = _spd(30, 1, cond=1e4)
    A, b = jnp.asarray(A), jnp.asarray(b)
    x, info = npgjax.conjugate_gradient(lambda v: A @ v, b, max_iters=4, tol=1e-14)
    assert int(info.iterations) == 4
    assert not bool(info.converged)
    true_res = float(jnp.linalg.norm(b - A @ x))
    assert float(info.residual_norm) == pytest.approx(true_res, rel=1e-6)
    # From x0 = 0 every CG iterate satisfies x^T A x = b^T x.
    assert float(x @ A @ x) == pytest.approx(float(b @ x), rel=1e-9)


def test_cg_zero_rhs_and_x0(x64):
    A, b = _spd(5, 2)
    A = jnp.asarray(A)
    x, info = npgjax.conjugate_gradient(lambda v: A @ v, jnp.zeros(5))
    assert int(info.iterations) == 0 and bool(jnp.all(x == 0)) and bool(info.converged)
    sol = jnp.linalg.solve(A, jnp.asarray(b))
    x, info = npgjax.conjugate_gradient(lambda v: A @ v, jnp.asarray(b), x0=sol, max_iters=5)
    assert int(info.iterations) <= 1
    np.testing.assert_allclose(x, sol, rtol=1e-8)


def test_cg_under_jit_and_vmap():
    A, b = _spd(6, 3)
    A, b = jnp.asarray(A, jnp.float32), jnp.asarray(b, jnp.float32)
    solve = jax.jit(lambda b: npgjax.conjugate_gradient(lambda v: A @ v, b, max_iters=20)[0])
    np.testing.assert_allclose(solve(b), np.linalg.solve(np.asarray(A), np.asarray(b)), rtol=1e-3)
    xs = jax.vmap(solve)(jnp.stack([b, 2 * b]))
    np.testing.assert_allclose(xs[1], 2 * xs[0], rtol=1e-4)


def test_cg_indefinite_stops_without_nan():
    A = jnp.diag(jnp.array([1.0, -1.0]))
    x, info = npgjax.conjugate_gradient(lambda v: A @ v, jnp.array([1.0, 1.0]), max_iters=5)
    assert bool(jnp.all(jnp.isfinite(x))) and not bool(info.converged)


def test_cholesky_solve_and_singular_fallback(x64):
    A, b = _spd(6, 4)
    x, info = npgjax.cholesky_solve(lambda v: jnp.asarray(A) @ v, jnp.asarray(b))
    np.testing.assert_allclose(x, np.linalg.solve(A, b), rtol=1e-10)
    assert int(info.iterations) == 0 and bool(info.converged)
    x2, _ = npgjax.cholesky_solve(jnp.asarray(A), jnp.asarray(b))
    np.testing.assert_allclose(x2, x, rtol=1e-12)
    # Rank-1 matrix: the least-norm solution, finite.
    u = jnp.array([1.0, 2.0, 0.0])
    S = jnp.outer(u, u)
    x3, _ = npgjax.cholesky_solve(S, u)
    np.testing.assert_allclose(x3, np.linalg.pinv(np.asarray(S)) @ np.asarray(u), atol=1e-10)
    with pytest.raises(ValueError, match="shape"):
        npgjax.cholesky_solve(jnp.eye(2), jnp.ones(3))
    with pytest.raises(ValueError, match="max_iters"):
        npgjax.conjugate_gradient(lambda v: v, jnp.ones(2), max_iters=-1)


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 8), st.integers(0, 10_000))
def test_cg_property_exact_in_n_steps(n, seed):
    with jax.enable_x64(True):
        A, b = _spd(n, seed, cond=10.0)
        A, b = jnp.asarray(A), jnp.asarray(b)
        x, info = npgjax.conjugate_gradient(lambda v: A @ v, b, max_iters=3 * n, tol=1e-12)
        np.testing.assert_allclose(A @ x, b, atol=1e-8)
        assert int(info.iterations) <= n + 2


def test_cg_nan_operator_reports_nan_residual():
    x, info = npgjax.conjugate_gradient(lambda v: v * jnp.nan, jnp.ones(3))
    assert bool(jnp.isnan(info.residual_norm)) and not bool(info.converged)


def test_cholesky_solve_under_vmap_matches_one_by_one():
    """vmap runs the dense solve one matrix at a time (batched CPU LAPACK can deadlock)."""
    key = jax.random.PRNGKey(0)
    M = jax.random.normal(key, (6, 5, 5))
    A = M @ jnp.swapaxes(M, 1, 2) + 0.1 * jnp.eye(5)
    A = A.at[0].set(jnp.diag(jnp.array([1.0, 1.0, 0.0, 0.0, 0.0])))  # singular: pinv path
    b = jax.random.normal(jax.random.PRNGKey(1), (6, 5))
    xs, infos = jax.jit(jax.vmap(npgjax.cholesky_solve))(A, b)
    for i in range(6):
        x, info = npgjax.cholesky_solve(A[i], b[i])
        np.testing.assert_allclose(xs[i], x, rtol=1e-4, atol=1e-5)
        assert bool(infos.converged[i]) == bool(info.converged)
    assert bool(infos.converged[1:].all()) and not bool(infos.converged[0])


def test_cg_reports_first_curvature_and_default_tol():
    A, b = _spd(6, 5, cond=1e3)
    A, b = jnp.asarray(A, jnp.float32), jnp.asarray(b, jnp.float32)
    x, info = npgjax.conjugate_gradient(lambda v: A @ v, b, max_iters=100)
    assert float(info.first_curvature) == pytest.approx(float(b @ A @ b), rel=1e-5)
    # The default tolerance is 10 eps of float32: it stops before max_iters.
    assert bool(info.converged) and int(info.iterations) < 100
    assert float(info.residual_norm) <= 10 * np.finfo(np.float32).eps * float(jnp.linalg.norm(b))
    _, info = npgjax.conjugate_gradient(lambda v: A @ v, b, x0=b)
    assert info.first_curvature is None
    assert npgjax.cholesky_solve(A, b)[1].first_curvature is None
