"""Trajectory log-probabilities and segmenting auto-reset rollouts."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import npgjax

from .conftest import mlp


def test_trajectory_log_prob_masks_padding():
    lp = jax.random.normal(jax.random.PRNGKey(0), (4, 6))
    lengths = np.array([6, 3, 1, 5])
    mask = np.arange(6)[None, :] < lengths[:, None]
    ref = [float(np.sum(np.asarray(lp)[i, : lengths[i]])) for i in range(4)]
    np.testing.assert_allclose(npgjax.trajectory_log_prob(lp, jnp.asarray(mask)), ref, rtol=1e-6)
    np.testing.assert_allclose(npgjax.trajectory_log_prob(lp), np.asarray(lp).sum(1), rtol=1e-6)
    with pytest.raises(AssertionError):
        npgjax.trajectory_log_prob(lp, jnp.ones((4, 5)))


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 7), st.integers(1, 3), st.integers(0, 10_000))
def test_segment_log_probs_against_python(T, E, seed):
    rng = np.random.default_rng(seed)
    lp = rng.normal(size=(T, E)).astype(np.float32)
    dones = rng.random((T, E)) < 0.3
    # Under jit: one compile per shape instead of one per eager operation and shape.
    seg, used = jax.jit(npgjax.segment_log_probs)(jnp.asarray(lp), jnp.asarray(dones))
    ref = []
    for e in range(E):
        cur, started = 0.0, False
        for t in range(T):
            cur += lp[t, e]
            started = True
            if dones[t, e]:
                ref.append(cur)
                cur, started = 0.0, False
        if started:
            ref.append(cur)
    np.testing.assert_allclose(np.asarray(seg)[np.asarray(used)], ref, rtol=1e-5, atol=1e-6)
    assert int(used.sum()) == len(ref)


def test_policy_log_prob_fn_step_and_trajectory():
    key = jax.random.PRNGKey(0)
    w = jax.random.normal(key, (3, 2))
    obs = jax.random.normal(key, (4, 5, 3))
    actions = jax.random.bernoulli(key, 0.5, (4, 5)).astype(jnp.int32)
    mask = jnp.arange(5)[None, :] < jnp.array([5, 2, 3, 1])[:, None]

    def policy(p, o):
        return npgjax.Categorical(o @ p)

    traj = npgjax.policy_log_prob_fn(policy, per="trajectory")
    step = npgjax.policy_log_prob_fn(policy, per="step")
    out = traj(w, {"obs": obs, "actions": actions, "mask": mask})
    flat = step(w, {"obs": obs.reshape(20, 3), "actions": actions.reshape(20)}).reshape(4, 5)
    np.testing.assert_allclose(out, jnp.where(mask, flat, 0).sum(1), rtol=1e-6)
    with pytest.raises(ValueError, match=r"\[N, ...\]"):
        step(w, {"obs": obs, "actions": actions})
    with pytest.raises(ValueError, match="per must be"):
        npgjax.policy_log_prob_fn(policy, per="episode")


def test_dynamics_term_does_not_change_scores():
    """Adding a theta-independent log-dynamics term leaves every score unchanged."""
    params = [{"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}]
    batch = {"obs": jnp.arange(8.0).reshape(4, 2), "actions": jnp.array([0, 1, 2, 1])}

    def lp(p, b):
        return npgjax.Categorical(mlp(p, b["obs"])).log_prob(b["actions"])

    s1 = npgjax.score_matrix(lp, params, batch)
    def with_dynamics(p, b):  # log p(s'|s, a) depends on the data only
        return lp(p, b) + jnp.sin(b["obs"]).sum(-1) - 1.7

    s2 = npgjax.score_matrix(with_dynamics, params, batch)
    np.testing.assert_allclose(s1, s2)
