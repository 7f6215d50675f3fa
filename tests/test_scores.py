"""Per-sample scores against a loop of jax.grad, chunking, and shape errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import npgjax

from .conftest import make_problem


@pytest.mark.parametrize("head", ["categorical", "gaussian"])
def test_scores_match_per_sample_grad_loop(head, x64):
    params, batch, _, log_prob_fn = make_problem(head, n=7)
    S = npgjax.score_matrix(log_prob_fn, params, batch)
    for i in range(7):
        bi = jax.tree.map(lambda x: x[i : i + 1], batch)
        gi = jax.grad(lambda p: log_prob_fn(p, bi)[0])(params)
        np.testing.assert_allclose(S[i], ravel_pytree(gi)[0], atol=1e-12)


@pytest.mark.parametrize("chunk", [1, 4, 5, 100])
def test_chunking_matches_unchunked(chunk, x64):
    params, batch, _, log_prob_fn = make_problem("categorical", n=13)
    full = npgjax.per_sample_scores(log_prob_fn, params, batch)
    chunked = npgjax.per_sample_scores(log_prob_fn, params, batch, chunk_size=chunk)
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(chunked), strict=True):
        assert a.shape == b.shape and a.shape[0] == 13
        np.testing.assert_allclose(a, b, atol=1e-12)


def test_score_mean_is_zero_in_expectation(x64):
    """E_a[grad log pi(a|s)] = 0: the exact expectation over actions."""
    params, batch, dist_fn, log_prob_fn = make_problem("categorical", n=5)
    p = dist_fn(params, batch).probs
    total = 0.0
    for a in range(p.shape[1]):
        b = dict(batch, actions=jnp.full(5, a))
        total = total + p[:, a : a + 1] * npgjax.score_matrix(log_prob_fn, params, b)
    np.testing.assert_allclose(total, 0.0, atol=1e-12)


def test_batch_shape_errors_are_clear():
    params, batch, _, log_prob_fn = make_problem("categorical", n=6, dtype=jnp.float32)
    bad = dict(batch, actions=batch["actions"][:5])
    with pytest.raises(ValueError, match="shape"):
        npgjax.per_sample_scores(log_prob_fn, params, bad)
    with pytest.raises(ValueError, match=r"\[N\]"):
        npgjax.per_sample_scores(lambda p, b: log_prob_fn(p, b)[:, None], params, batch)
    with pytest.raises(ValueError, match="chunk_size"):
        npgjax.per_sample_scores(log_prob_fn, params, batch, chunk_size=0)
