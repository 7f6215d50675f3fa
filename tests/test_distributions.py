"""Distributions: log-probs, KL, entropy, and their Fisher against closed forms."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import npgjax
from npgjax import Categorical, DiagGaussian


def test_categorical_log_prob_entropy_kl(x64):
    logits = jnp.array([[0.3, -1.0, 2.0], [0.0, 0.0, 0.0]])
    d = Categorical(logits)
    p = np.exp(np.asarray(logits)) / np.exp(np.asarray(logits)).sum(-1, keepdims=True)
    np.testing.assert_allclose(d.log_prob(jnp.array([2, 1])), np.log([p[0, 2], p[1, 1]]))
    np.testing.assert_allclose(d.entropy(), -(p * np.log(p)).sum(-1))
    q = Categorical(logits[::-1])
    pq = p[::-1]
    np.testing.assert_allclose(d.kl(q), (p * (np.log(p) - np.log(pq))).sum(-1))
    assert d.kl(d).max() == pytest.approx(0.0, abs=1e-12)


def test_categorical_fisher_closed_form(x64):
    """diag(p) - p p^T, from the expected outer product of the scores over all actions."""
    logits = jnp.array([0.5, -0.3, 1.2, 0.0])
    p = jax.nn.softmax(logits)
    scores = jax.vmap(lambda a: jax.grad(lambda z: Categorical(z).log_prob(a))(logits))(
        jnp.arange(4)
    )
    expected_outer = jnp.einsum("a,ai,aj->ij", p, scores, scores)
    closed = jnp.diag(p) - jnp.outer(p, p)
    np.testing.assert_allclose(expected_outer, closed, atol=1e-12)
    np.testing.assert_allclose(Categorical(logits).fisher_matrix(), closed, atol=1e-12)
    # KL Hessian at the same point.
    hess = jax.hessian(lambda z: Categorical(logits).kl(Categorical(z)))(logits)
    np.testing.assert_allclose(hess, closed, atol=1e-10)
    t = jnp.array([1.0, 2.0, -1.0, 0.5])
    np.testing.assert_allclose(
        Categorical(logits).fisher_vector_product(Categorical(t)).logits, closed @ t, atol=1e-12
    )


def test_gaussian_fisher_closed_form(x64):
    """In (mu, log sigma) the Fisher is diag(1/sigma^2, 2)."""
    mu = jnp.array([0.3, -1.0])
    ls = jnp.array([0.2, -0.7])
    d0 = DiagGaussian(mu, ls)

    def kl(theta):
        return d0.kl(DiagGaussian(theta[:2], theta[2:]))

    hess = jax.hessian(kl)(jnp.concatenate([mu, ls]))
    closed = jnp.diag(jnp.concatenate([jnp.exp(-2 * ls), jnp.array([2.0, 2.0])]))
    np.testing.assert_allclose(hess, closed, atol=1e-10)
    t = DiagGaussian(jnp.array([1.0, 2.0]), jnp.array([0.5, -1.0]))
    ft = d0.fisher_vector_product(t)
    np.testing.assert_allclose(
        jnp.concatenate([ft.mean, ft.log_std]),
        closed @ jnp.concatenate([t.mean, t.log_std]),
        atol=1e-12,
    )


def test_gaussian_log_prob_entropy_kl_against_formulas(x64):
    mu, ls = jnp.array([[0.5, -0.2]]), jnp.array([0.1, -0.4])
    d = DiagGaussian(mu, ls)
    a = jnp.array([[0.0, 1.0]])
    s = np.exp(np.asarray(ls))
    ref = np.sum(-0.5 * ((a - mu) / s) ** 2 - np.log(s) - 0.5 * math.log(2 * math.pi))
    np.testing.assert_allclose(d.log_prob(a), [ref])
    np.testing.assert_allclose(d.entropy(), [np.sum(np.log(s) + 0.5 * np.log(2 * np.pi * np.e))])
    # KL by Monte Carlo.
    q = DiagGaussian(mu + 0.3, ls - 0.2)
    x = d.sample(jax.random.PRNGKey(0), (200_000,))
    mc = jnp.mean(d.log_prob(x[:, 0]) - q.log_prob(x[:, 0]))
    assert float(d.kl(q)[0]) == pytest.approx(float(mc), rel=0.03)


def test_samples_match_distribution():
    d = Categorical(jnp.log(jnp.array([0.2, 0.5, 0.3])))
    a = d.sample(jax.random.PRNGKey(1), (40_000,))
    np.testing.assert_allclose(np.bincount(np.asarray(a), minlength=3) / 40_000, d.probs, atol=0.01)
    g = DiagGaussian(jnp.array([1.0]), jnp.array([jnp.log(2.0)]))
    x = g.sample(jax.random.PRNGKey(2), (40_000,))
    assert float(x.mean()) == pytest.approx(1.0, abs=0.05)
    assert float(x.std()) == pytest.approx(2.0, rel=0.03)


def test_kl_fallback_matches_closed_form(x64):
    """An object without fisher_vector_product uses the Hessian of its KL."""

    @jax.tree_util.register_pytree_node_class
    class OnlyKL:
        def __init__(self, logits):
            self.logits = logits

        def tree_flatten(self):
            return (self.logits,), None

        @classmethod
        def tree_unflatten(cls, aux, ch):
            return cls(ch[0])

        def kl_divergence(self, other):
            return Categorical(self.logits).kl(Categorical(other.logits))

    logits = jax.random.normal(jax.random.PRNGKey(0), (5, 4), jnp.float64)
    t = jax.random.normal(jax.random.PRNGKey(1), (5, 4), jnp.float64)
    out = npgjax.distribution_fisher_vector_product(OnlyKL(logits), OnlyKL(t))
    ref = Categorical(logits).fisher_vector_product(Categorical(t))
    np.testing.assert_allclose(out.logits, ref.logits, atol=1e-10)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="batch shape"):
        Categorical(jnp.zeros((4, 3))).log_prob(jnp.zeros((5,), int))
    with pytest.raises(ValueError, match="must lie in"):
        Categorical(jnp.zeros((2, 3))).log_prob(jnp.array([0, 3]))
    with pytest.raises(ValueError, match="broadcast"):
        DiagGaussian(jnp.zeros((4, 3)), jnp.zeros(2))
    with pytest.raises(ValueError, match="shape"):
        DiagGaussian(jnp.zeros((4, 3)), jnp.zeros(3)).log_prob(jnp.zeros((4, 2)))


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(-5, 5), min_size=2, max_size=6))
def test_categorical_fisher_is_psd_and_kills_constant_shift(logits):
    d = Categorical(jnp.asarray(logits, jnp.float32))
    F = np.asarray(d.fisher_matrix(), np.float64)
    assert np.linalg.eigvalsh(F).min() > -1e-6
    np.testing.assert_allclose(F @ np.ones(len(logits)), 0.0, atol=1e-6)


def test_distributions_are_pytrees_under_jit():
    d = jax.jit(lambda z: DiagGaussian(z, jnp.zeros(2)))(jnp.ones((3, 2)))
    assert d.log_std.shape == (3, 2)
    assert jax.tree.structure(d) == jax.tree.structure(DiagGaussian(jnp.ones((3, 2)), 0.0))
