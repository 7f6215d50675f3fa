"""Step rules: the KL-scaled natural step, angles, invariance, and the line search."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.flatten_util import ravel_pytree

import npgjax

from .conftest import make_problem


def _natural(dist_fn, log_prob_fn, params, batch, damping=1e-10, analytic=True):
    if analytic:
        fvp = npgjax.analytic_fisher_vector_product(dist_fn, params, batch, damping=damping)
    else:
        fvp = npgjax.fisher_vector_product(log_prob_fn, params, batch, damping=damping)
    g = jax.grad(_objective)(params, batch, dist_fn)
    x, _ = npgjax.cholesky_solve(fvp, g)
    return g, x


def _objective(p, batch, dist_fn):
    # An arbitrary smooth policy objective: mean of an advantage-weighted log-prob.
    adv = jnp.sin(jnp.arange(batch["obs"].shape[0]) * 1.3)
    return jnp.mean(adv * dist_fn(p, batch).log_prob(batch["actions"]))


def test_trust_region_scale():
    assert float(npgjax.trust_region_scale(0.0, 0.01)) == 0.0
    assert float(npgjax.trust_region_scale(-1.0, 0.01)) == 0.0
    assert float(npgjax.trust_region_scale(jnp.nan, 0.01)) == 0.0
    assert float(npgjax.trust_region_scale(8.0, 0.04)) == pytest.approx(0.1)
    for bad in (0.0, -0.1):
        with pytest.raises(ValueError, match="max_kl"):
            npgjax.trust_region_scale(1.0, bad)
    # A traced non-positive max_kl gives a zero scale, not NaN.
    assert float(jax.jit(npgjax.trust_region_scale)(2.0, -1.0)) == 0.0


@pytest.mark.parametrize("head", ["categorical", "gaussian"])
@pytest.mark.parametrize(("eps", "damping"), [(1e-7, 0.0), (1e-6, 0.0), (1e-4, 1e-3)])
def test_measured_kl_of_scaled_step_is_near_eps(head, eps, damping, x64):
    params, batch, dist_fn, log_prob_fn = make_problem(head, n=64)
    g, x = _natural(dist_fn, log_prob_fn, params, batch, damping=damping)
    s = npgjax.trust_region_scale(npgjax.tree_vdot(g, x), eps)
    new = jax.tree.map(lambda p, d: p + s * d, params, x)
    kl = jnp.mean(dist_fn(params, batch).kl(dist_fn(new, batch)))
    assert abs(float(kl) / eps - 1.0) < 0.2


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 1000), st.sampled_from(["categorical", "gaussian"]), st.booleans())
def test_natural_and_vanilla_gradient_within_90_degrees(seed, head, analytic):
    with jax.enable_x64(True):
        params, batch, dist_fn, log_prob_fn = make_problem(head, key=seed, n=16)
        g, x = _natural(dist_fn, log_prob_fn, params, batch, damping=1e-6, analytic=analytic)
        assert float(npgjax.tree_vdot(g, x)) > 0


def test_reparametrisation_invariance(x64):
    """The natural step for theta and for phi = A theta give the same change of policy."""
    # A Gaussian head: its Fisher is full rank, so the exact inverse exists (a softmax's
    # logits are only defined up to a shift, which makes its Fisher singular).
    params, batch, dist_fn, log_prob_fn = make_problem("gaussian", n=64, hidden=3)
    flat, unravel = ravel_pytree(params)
    P = flat.size
    A = jnp.eye(P) + 0.5 * jax.random.normal(jax.random.PRNGKey(3), (P, P)) / jnp.sqrt(P)
    Ainv = jnp.linalg.inv(A)

    def dist_theta(f, b):
        return dist_fn(unravel(f), b)

    def dist_phi(phi, b):
        return dist_fn(unravel(Ainv @ phi), b)

    def step(dist, z):
        fvp = npgjax.analytic_fisher_vector_product(dist, z, batch)
        g = jax.grad(lambda z: _objective(z, batch, dist))(z)
        x, _ = npgjax.cholesky_solve(fvp, g)
        return z + npgjax.trust_region_scale(g @ x, 1e-3) * x

    new_theta = step(dist_theta, flat)
    new_phi = step(dist_phi, A @ flat)
    np.testing.assert_allclose(
        dist_theta(new_theta, batch).mean, dist_phi(new_phi, batch).mean, atol=1e-8
    )
    np.testing.assert_allclose(Ainv @ new_phi, new_theta, atol=1e-8)
    # The vanilla gradient step is not invariant.
    g1 = jax.grad(lambda z: _objective(z, batch, dist_theta))(flat)
    g2 = jax.grad(lambda z: _objective(z, batch, dist_phi))(A @ flat)
    assert float(jnp.max(jnp.abs(Ainv @ (A @ flat + g2) - (flat + g1)))) > 1e-3


def test_line_search_never_accepts_kl_above_eps(x64):
    params, batch, dist_fn, log_prob_fn = make_problem("categorical", n=64)
    g, x = _natural(dist_fn, log_prob_fn, params, batch)
    old = dist_fn(params, batch)
    kl_fn = lambda q: jnp.mean(old.kl(dist_fn(q, batch)))
    loss_fn = lambda p: -_objective(p, batch, dist_fn)
    for big in (0.05, 0.5, 5.0):
        step = jax.tree.map(lambda d: npgjax.trust_region_scale(npgjax.tree_vdot(g, x), big) * d, x)
        for eps in (1e-3, 1e-2):
            new, info = npgjax.backtracking_line_search(
                loss_fn, kl_fn, params, step, max_kl=eps, shrink=0.7, max_tries=15
            )
            measured = float(kl_fn(new))
            assert measured <= eps + 1e-12
            if bool(info.accepted):
                assert float(info.kl) == pytest.approx(measured, rel=1e-9)
                assert float(loss_fn(new)) < float(loss_fn(params))


def test_line_search_restores_params_when_every_try_fails():
    params = jnp.array([1.0, 2.0])
    new, info = npgjax.backtracking_line_search(
        lambda p: jnp.sum(p**2), lambda q: jnp.sum((q - params) ** 2),
        params, jnp.array([1.0, 1.0]), max_kl=0.01, max_tries=4,
    )
    assert not bool(info.accepted) and int(info.tries) == 4
    np.testing.assert_array_equal(new, params)
    with pytest.raises(ValueError, match="shrink"):
        npgjax.backtracking_line_search(lambda p: 0.0, lambda q: 0.0, params, params,
                                        max_kl=0.1, shrink=1.5)
    with pytest.raises(ValueError, match="max_kl"):
        npgjax.backtracking_line_search(lambda p: 0.0, lambda q: 0.0, params, params, max_kl=0)


def test_zero_gradient_gives_zero_step():
    params, batch, dist_fn, _ = make_problem("gaussian", dtype=jnp.float32)
    fvp = npgjax.analytic_fisher_vector_product(dist_fn, params, batch, damping=1e-3)
    zero = jax.tree.map(jnp.zeros_like, params)
    x, info = npgjax.conjugate_gradient(fvp, zero)
    s = npgjax.trust_region_scale(npgjax.tree_vdot(zero, x), 0.01)
    for leaf in jax.tree.leaves(jax.tree.map(lambda d: s * d, x)):
        assert bool(jnp.all(leaf == 0))


def test_line_search_proposed_kl_kl_only_mode_and_scalar_checks():
    params = jnp.zeros(2)
    kl = lambda q: 0.5 * jnp.sum(q**2)
    step = jnp.array([1.0, 1.0])
    # KL-only (a guard): the first try within the bound is kept whatever the loss.
    new, info = npgjax.backtracking_line_search(None, kl, params, step, max_kl=0.1, shrink=0.5)
    assert bool(info.accepted) and int(info.tries) == 3 and float(info.proposed_kl) == 1.0
    np.testing.assert_allclose(new, [0.25, 0.25])
    # A zero step is never "accepted" by the loss test, whatever the rounding.
    _, info = npgjax.backtracking_line_search(
        lambda p: jnp.sum(p**2), kl, params, jnp.zeros(2), max_kl=0.1
    )
    assert not bool(info.accepted)
    # A traced max_kl that is not finite and positive accepts nothing.
    for bad in (jnp.nan, jnp.inf, -1.0):
        info = jax.jit(lambda m: npgjax.backtracking_line_search(
            lambda p: jnp.sum((p - 1.0) ** 2), kl, params, step, max_kl=m)[1])(bad)
        assert not bool(info.accepted)
    with pytest.raises(ValueError, match="kl_fn must return a scalar"):
        npgjax.backtracking_line_search(None, lambda q: q, params, step, max_kl=0.1)
