"""Estimators against plain-Python loop references, plus properties and input checks."""

from __future__ import annotations

import doctest

import chex
import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npgjax import estimators
from npgjax.estimators import (
    discounted_returns,
    explained_variance,
    gae,
    normalize_advantages,
    surrogate_loss,
    truncation_aware_returns,
)

# ---------------------------------------------------------------- references (no jax)


def _columns(x):
    """[T] or [T, E] numpy array -> list of E per-env lists over time."""
    x = np.asarray(x, np.float64)
    x2 = x.reshape(x.shape[0], -1)
    return [list(x2[:, e]) for e in range(x2.shape[1])]


def _stack(cols, shape):
    return np.array(cols, np.float64).T.reshape(shape)


def ref_discounted_returns(rewards, dones, gamma, bootstrap=None):
    T = len(rewards)
    boot = np.zeros(np.shape(rewards)[1:]) if bootstrap is None else np.asarray(bootstrap)
    out = []
    for r, d, b in zip(_columns(rewards), _columns(dones), _columns(boot[None]), strict=True):
        g, col = b[0], [0.0] * T
        for t in reversed(range(T)):
            g = r[t] + (0.0 if d[t] else gamma * g)
            col[t] = g
        out.append(col)
    return _stack(out, np.shape(rewards))


def ref_truncation_aware_returns(rewards, next_values, terminated, truncated, gamma):
    T = len(rewards)
    out = []
    cols = zip(*(_columns(x) for x in (rewards, next_values, terminated, truncated)), strict=True)
    for r, nv, term, trunc in cols:
        col = [0.0] * T
        for t in reversed(range(T)):
            if term[t]:  # terminal: never bootstrap
                col[t] = r[t]
            elif trunc[t] or t == T - 1:  # cut: bootstrap from V(s_{t+1})
                col[t] = r[t] + gamma * nv[t]
            else:
                col[t] = r[t] + gamma * col[t + 1]
        out.append(col)
    return _stack(out, np.shape(rewards))


def ref_gae(rewards, values, next_values, terminated, truncated, gamma, lam):
    T = len(rewards)
    adv = []
    cols = zip(
        *(_columns(x) for x in (rewards, values, next_values, terminated, truncated)), strict=True
    )
    for r, v, nv, term, trunc in cols:
        col = [0.0] * T
        for t in reversed(range(T)):
            delta = r[t] - v[t] + (0.0 if term[t] else gamma * nv[t])
            following = 0.0 if (term[t] or trunc[t] or t == T - 1) else col[t + 1]
            col[t] = delta + gamma * lam * following
        adv.append(col)
    adv = _stack(adv, np.shape(rewards))
    return adv, adv + np.asarray(values, np.float64)


def _flat_valid(x, mask):
    x = np.asarray(x, np.float64).ravel()
    if mask is None:
        return list(x), [True] * len(x)
    m = [bool(b) for b in np.asarray(mask).ravel()]
    return [xi for xi, b in zip(x, m, strict=True) if b], m


def _mean_var(xs):
    n = len(xs)
    mean = sum(xs) / n
    return mean, sum((x - mean) ** 2 for x in xs) / n


def ref_normalize(adv, mask=None, eps=1e-8):
    valid, m = _flat_valid(adv, mask)
    if not valid:
        return np.zeros(np.shape(adv))
    mean, var = _mean_var(valid)
    out = [
        (a - mean) / (var**0.5 + eps) if b else 0.0 for a, b in zip(np.ravel(adv), m, strict=True)
    ]
    return np.array(out).reshape(np.shape(adv))


def ref_surrogate(logp, old, adv, mask=None):
    lp, _ = _flat_valid(logp, mask)
    ol, _ = _flat_valid(old, mask)
    ad, _ = _flat_valid(adv, mask)
    terms = [np.exp(a - b) * c for a, b, c in zip(lp, ol, ad, strict=True)]
    return -sum(terms) / len(terms)


def ref_explained_variance(pred, target, mask=None):
    y, _ = _flat_valid(target, mask)
    p, _ = _flat_valid(pred, mask)
    _, var_y = _mean_var(y)
    _, var_res = _mean_var([a - b for a, b in zip(y, p, strict=True)])
    return 0.0 if var_y == 0 else 1 - var_res / var_y


# ---------------------------------------------------------------- data


def rollout(seed, shape, p_term=0.15, p_trunc=0.1, dtype=np.float32):
    """Random rollout with several episode ends; some steps both terminated and truncated."""
    rng = np.random.default_rng(seed)
    rewards = rng.normal(size=shape).astype(dtype)
    values = rng.normal(size=shape).astype(dtype)
    next_values = rng.normal(size=shape).astype(dtype)
    terminated = rng.random(shape) < p_term
    truncated = rng.random(shape) < p_trunc
    return rewards, values, next_values, terminated, truncated


SHAPES = [(1,), (12, 3), (7, 2, 2)]
TOL = {"rtol": 1e-5, "atol": 1e-5}


# ---------------------------------------------------------------- returns


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("with_bootstrap", [False, True])
def test_discounted_returns_matches_reference(shape, with_bootstrap):
    rewards, values, _, term, _ = rollout(0, shape)
    boot = values[0] if with_bootstrap else None  # shape [*batch]
    got = discounted_returns(rewards, term, 0.93, bootstrap_value=boot)
    np.testing.assert_allclose(got, ref_discounted_returns(rewards, term, 0.93, boot), **TOL)
    assert got.shape == shape and got.dtype == jnp.float32
    # Float dones behave as bool ones.
    got_f = discounted_returns(rewards, term.astype(np.float32), 0.93, boot)
    np.testing.assert_allclose(got_f, got)


def test_discounted_returns_hand_example():
    got = discounted_returns(jnp.array([1.0, 2.0, 3.0]), jnp.array([0, 0, 0]), 0.5, 4.0)
    np.testing.assert_allclose(got, [1 + 0.5 * 2 + 0.25 * 3 + 0.125 * 4, 2 + 1.5 + 1, 3 + 2])


@pytest.mark.parametrize("shape", SHAPES)
def test_truncation_aware_returns_matches_reference(shape):
    rewards, _, nv, term, trunc = rollout(1, shape)
    got = truncation_aware_returns(rewards, nv, term, trunc, 0.9)
    np.testing.assert_allclose(
        got, ref_truncation_aware_returns(rewards, nv, term, trunc, 0.9), **TOL
    )


def test_truncation_aware_returns_cases():
    # t=0 continues, t=1 truncated, t=2 terminated and truncated, t=3 the rollout end.
    r = jnp.array([1.0, 1.0, 1.0, 1.0])
    nv = jnp.array([100.0, 10.0, 50.0, 4.0])
    term = jnp.array([False, False, True, False])
    trunc = jnp.array([False, True, True, False])
    got = truncation_aware_returns(r, nv, term, trunc, 0.5)
    np.testing.assert_allclose(got, [1 + 0.5 * 6.0, 1 + 0.5 * 10, 1.0, 1 + 0.5 * 4])
    # A terminated last step does not bootstrap.
    got = truncation_aware_returns(r, nv, jnp.array([0, 0, 0, 1]), jnp.zeros(4), 0.5)
    np.testing.assert_allclose(got[-1], 1.0)


def test_truncation_aware_equals_discounted_without_truncation():
    rewards, _, nv, term, _ = rollout(2, (10, 4))
    no_trunc = np.zeros_like(term)
    got = truncation_aware_returns(rewards, nv, term, no_trunc, 0.95)
    want = discounted_returns(rewards, term, 0.95, bootstrap_value=jnp.asarray(nv[-1]))
    np.testing.assert_allclose(got, want, **TOL)


# ---------------------------------------------------------------- gae


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("lam", [0.0, 0.7, 1.0])
def test_gae_matches_reference(shape, lam):
    data = rollout(3, shape)
    adv, targets = gae(*data, 0.97, lam)
    want_adv, want_targets = ref_gae(*data, 0.97, lam)
    np.testing.assert_allclose(adv, want_adv, **TOL)
    np.testing.assert_allclose(targets, want_targets, **TOL)


def test_gae_does_not_leak_across_episodes():
    r, v, nv, term, trunc = rollout(4, (10,), p_term=0.0, p_trunc=0.0)
    term[3], trunc[6] = True, True
    adv, _ = gae(r, v, nv, term, trunc, 0.9, 0.95)
    # Changing anything after step 3 (incl. next_values of a terminated step) leaves
    # A_0..A_3 alone; after step 6 leaves A_4..A_6 alone.
    r2, v2, nv2 = r.copy(), v.copy(), nv.copy()
    r2[7:] += 5.0
    v2[7:] -= 3.0
    nv2[3] = 1e6
    nv2[7:] += 2.0
    adv2, _ = gae(r2, v2, nv2, term, trunc, 0.9, 0.95)
    np.testing.assert_allclose(adv2[:7], adv[:7], **TOL)
    assert not np.allclose(adv2[7:], adv[7:])
    # The truncated step's next value enters its episode only.
    nv3 = nv.copy()
    nv3[6] += 1.0
    adv3, _ = gae(r, v, nv3, term, trunc, 0.9, 0.95)
    np.testing.assert_allclose(adv3[:4], adv[:4], **TOL)
    np.testing.assert_allclose(adv3[7:], adv[7:], **TOL)
    np.testing.assert_allclose(adv3[6] - adv[6], 0.9, rtol=1e-5)


# ---------------------------------------------------------------- properties


@jax.jit
def _gae_identities(r, v, nv_term, nv, term, trunc, gamma, lam):
    """Both sides of the GAE identities, in one compiled call per shape."""
    no_trunc = jnp.zeros_like(trunc)
    adv1, _ = gae(r, v, nv_term, term, no_trunc, gamma, 1.0)
    g = discounted_returns(r, term, gamma, bootstrap_value=nv_term[-1])
    _, targets1 = gae(r, v, nv, term, trunc, gamma, 1.0)
    g_trunc = truncation_aware_returns(r, nv, term, trunc, gamma)
    adv0, _ = gae(r, v, nv, term, trunc, gamma, 0.0)
    delta = r + gamma * (1 - term) * nv - v
    return (adv1, g - v), (targets1, g_trunc), (adv0, delta), gae(r, v, nv, term, trunc, gamma, lam)


@settings(max_examples=30, deadline=None)
@given(
    T=st.sampled_from([1, 3, 8]),
    data=st.data(),
    seed=st.integers(0, 2**16),
    gamma=st.floats(0.0, 1.0),
    lam=st.floats(0.0, 1.0),
)
def test_gae_properties(T, data, seed, gamma, lam):
    term = data.draw(hnp.arrays(np.bool_, (T, 2)), label="terminated")
    trunc = data.draw(hnp.arrays(np.bool_, (T, 2)), label="truncated")
    rng = np.random.default_rng(seed)
    v_ext = rng.normal(size=(T + 1, 2))
    r = rng.normal(size=(T, 2))
    v = v_ext[:-1]
    # Within an episode next_values[t] == values[t+1]; at an episode end it is the value of
    # the pre-reset observation (irrelevant after a termination, so random there too).
    nv_term = v_ext[1:].copy()
    nv_term[term] = rng.normal(size=term.sum())
    nv = nv_term.copy()
    nv[trunc] = rng.normal(size=trunc.sum())
    with jax.enable_x64(True):
        pairs = _gae_identities(r, v, nv_term, nv, term, trunc, gamma, lam)
        adv, targets = pairs[-1]
        assert adv.dtype == jnp.float64
    # lambda = 1, no truncation: discounted return (bootstrapped at the end) - values.
    np.testing.assert_allclose(*pairs[0], rtol=1e-9, atol=1e-9)
    # lambda = 1 with truncation: targets are the truncation-aware returns.
    np.testing.assert_allclose(*pairs[1], rtol=1e-9, atol=1e-9)
    # lambda = 0: the one-step TD error.
    np.testing.assert_allclose(*pairs[2], rtol=1e-12, atol=1e-12)
    # Any lambda: the loop reference.
    want_adv, want_targets = ref_gae(r, v, nv, term, trunc, gamma, lam)
    np.testing.assert_allclose(adv, want_adv, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(targets, want_targets, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------- jit, dtypes, grads


def test_all_under_jit_with_traced_hyperparameters():
    r, v, nv, term, trunc = rollout(5, (11, 3))
    f = jax.jit(
        lambda r, v, nv, term, trunc, gamma, lam: (
            discounted_returns(r, term, gamma, v[0]),
            truncation_aware_returns(r, nv, term, trunc, gamma),
            gae(r, v, nv, term, trunc, gamma, lam),
        )
    )
    g, g_trunc, (adv, targets) = f(r, v, nv, term, trunc, 0.9, 0.8)
    np.testing.assert_allclose(g, ref_discounted_returns(r, term, 0.9, v[0]), **TOL)
    np.testing.assert_allclose(
        g_trunc, ref_truncation_aware_returns(r, nv, term, trunc, 0.9), **TOL
    )
    want_adv, want_targets = ref_gae(r, v, nv, term, trunc, 0.9, 0.8)
    np.testing.assert_allclose(adv, want_adv, **TOL)
    np.testing.assert_allclose(targets, want_targets, **TOL)

    mask = term | trunc
    logp, old = -np.abs(r), -np.abs(v)
    h = jax.jit(
        lambda a, m, lp, ol: (
            normalize_advantages(a, m),
            surrogate_loss(lp, ol, a, m),
            explained_variance(v, a, m),
        )
    )
    n, s, ev = h(r, mask, logp, old)
    np.testing.assert_allclose(n, ref_normalize(r, mask), **TOL)
    np.testing.assert_allclose(s, ref_surrogate(logp, old, r, mask), **TOL)
    np.testing.assert_allclose(ev, ref_explained_variance(v, r, mask), **TOL)


def test_float64(x64):
    r, v, nv, term, trunc = rollout(6, (8, 2), dtype=np.float64)
    outs = jax.jit(
        lambda r, v, nv, term, trunc: [
            discounted_returns(r, term, 0.99),
            truncation_aware_returns(r, nv, term, trunc, 0.99),
            *gae(r, v, nv, term, trunc, 0.99, 0.95),
            normalize_advantages(r),
            surrogate_loss(r, v, nv),
            explained_variance(v, r),
        ]
    )(r, v, nv, term, trunc)
    assert all(o.dtype == jnp.float64 for o in outs)
    np.testing.assert_allclose(outs[1], ref_truncation_aware_returns(r, nv, term, trunc, 0.99))
    np.testing.assert_allclose(outs[2], ref_gae(r, v, nv, term, trunc, 0.99, 0.95)[0])


def test_integer_rewards_become_float():
    got = discounted_returns(jnp.array([1, 1]), jnp.array([0, 0]), 0.5)
    assert jnp.issubdtype(got.dtype, jnp.floating)
    np.testing.assert_allclose(got, [1.5, 1.0])


def test_gae_vmap_over_batch():
    r, v, nv, term, trunc = rollout(7, (6, 4))
    f = jax.jit(jax.vmap(lambda *xs: gae(*xs, 0.9, 0.9)[0], in_axes=1, out_axes=1))
    np.testing.assert_allclose(
        f(r, v, nv, term, trunc), ref_gae(r, v, nv, term, trunc, 0.9, 0.9)[0], **TOL
    )


# ---------------------------------------------------------------- normalisation


@pytest.mark.parametrize("use_mask", [False, True])
def test_normalize_advantages_matches_reference(use_mask):
    rng = np.random.default_rng(8)
    adv = (3.0 + 2.0 * rng.normal(size=(16, 4))).astype(np.float32)
    mask = rng.random((16, 4)) < 0.6 if use_mask else None
    if use_mask:
        adv[~mask] = np.nan  # padding must not leak
    got = normalize_advantages(adv, mask)
    np.testing.assert_allclose(got, ref_normalize(adv, mask), **TOL)
    valid = np.asarray(got)[mask] if use_mask else np.asarray(got).ravel()
    np.testing.assert_allclose([valid.mean(), valid.std()], [0.0, 1.0], atol=1e-5)
    if use_mask:
        assert np.all(np.asarray(got)[~mask] == 0)


def test_normalize_advantages_degenerate():
    # No valid entry: zeros, no NaN.
    got = normalize_advantages(jnp.ones((3, 2)), jnp.zeros((3, 2), bool))
    np.testing.assert_array_equal(got, np.zeros((3, 2)))
    # Exactly constant float32 advantages: exactly zero (a naive two-pass gives ~ +-1).
    got = normalize_advantages(jnp.full((1000,), 123.456, jnp.float32))
    np.testing.assert_array_equal(got, np.zeros(1000))


# ---------------------------------------------------------------- surrogate


def test_surrogate_loss_value():
    rng = np.random.default_rng(9)
    logp, old, adv = (rng.normal(size=(5, 3)).astype(np.float32) for _ in range(3))
    mask = rng.random((5, 3)) < 0.5
    np.testing.assert_allclose(surrogate_loss(logp, old, adv), ref_surrogate(logp, old, adv))
    logp_pad = np.where(mask, logp, np.nan)
    np.testing.assert_allclose(
        surrogate_loss(logp_pad, old, adv, mask), ref_surrogate(logp, old, adv, mask), **TOL
    )
    assert surrogate_loss(logp, old, adv, np.zeros((5, 3), bool)) == 0.0


def _softmax_policy(n=20, obs_dim=3, n_actions=4, seed=10):
    rng = np.random.default_rng(seed)
    params = {"w": jnp.asarray(rng.normal(size=(obs_dim, n_actions))), "b": jnp.zeros(n_actions)}
    obs = jnp.asarray(rng.normal(size=(n, obs_dim)))
    actions = jnp.asarray(rng.integers(0, n_actions, size=n))
    adv = jnp.asarray(rng.normal(size=n))

    def log_probs(p):
        logits = obs @ p["w"] + p["b"]
        return jnp.take_along_axis(jax.nn.log_softmax(logits), actions[:, None], 1)[:, 0]

    return params, log_probs, adv


@pytest.mark.parametrize("use_mask", [False, True])
def test_surrogate_gradient_is_policy_gradient(x64, use_mask):
    params, log_probs, adv = _softmax_policy()
    mask = jnp.arange(adv.shape[0]) % 3 != 0 if use_mask else None
    m = jnp.ones_like(adv) if mask is None else mask.astype(adv.dtype)

    @jax.jit
    def both(params):
        old = jax.lax.stop_gradient(log_probs(params))
        grad = jax.grad(lambda p: surrogate_loss(log_probs(p), old, adv, mask))(params)
        # REINFORCE: -(1/sum m) sum_i m_i A_i grad log pi(a_i|s_i), from per-sample grads.
        scores = jax.jacobian(log_probs)(params)
        return grad, jax.tree.map(lambda s: -jnp.tensordot(m * adv, s, 1) / m.sum(), scores)

    grad, want = both(params)
    assert grad["w"].dtype == jnp.float64
    chex.assert_trees_all_close(grad, want, rtol=1e-10, atol=1e-12)


def test_surrogate_stops_gradients_to_old_log_probs_and_advantages():
    logp, old, adv = jnp.array([-1.0, -2.0]), jnp.array([-1.5, -1.0]), jnp.array([1.0, -3.0])
    g_old, g_adv = jax.grad(surrogate_loss, argnums=(1, 2))(logp, old, adv)
    np.testing.assert_array_equal(g_old, 0.0)
    np.testing.assert_array_equal(g_adv, 0.0)
    # And masked-out NaN padding gives no NaN gradient.
    lp = jnp.array([-1.0, jnp.nan])
    g = jax.grad(surrogate_loss)(lp, old, adv, jnp.array([True, False]))
    assert np.all(np.isfinite(g)) and g[1] == 0.0


# ---------------------------------------------------------------- explained variance


@pytest.mark.parametrize("use_mask", [False, True])
def test_explained_variance_matches_reference(use_mask):
    rng = np.random.default_rng(11)
    y = rng.normal(size=(10, 3)).astype(np.float32)
    pred = (y + 0.5 * rng.normal(size=(10, 3))).astype(np.float32)
    mask = rng.random((10, 3)) < 0.7 if use_mask else None
    got = explained_variance(pred, y, mask)
    np.testing.assert_allclose(got, ref_explained_variance(pred, y, mask), **TOL)
    assert got.shape == ()


def test_explained_variance_special_cases():
    y = jnp.array([1.0, -2.0, 3.0, 0.5])
    assert explained_variance(y, y) == 1.0
    np.testing.assert_allclose(explained_variance(jnp.full(4, y.mean()), y), 0.0, atol=1e-6)
    assert explained_variance(-y, y) < 0
    # Constant targets and empty masks give 0.0, not NaN (also for float32 rounding).
    assert explained_variance(y, jnp.full(4, 123.456)) == 0.0
    assert explained_variance(jnp.zeros(1000), jnp.full(1000, 0.1)) == 0.0
    assert explained_variance(y, y + 1.0, jnp.zeros(4, bool)) == 0.0


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: discounted_returns(jnp.zeros(5), jnp.zeros(4), 0.9), r"dones.*\(5,\).*\(4,\)"),
        (lambda: discounted_returns(jnp.zeros(()), jnp.zeros(()), 0.9), "time-major"),
        (
            lambda: discounted_returns(jnp.zeros((5, 2)), jnp.zeros((5, 2)), 0.9, jnp.zeros(3)),
            r"bootstrap_value must have shape rewards.shape\[1:\] = \(2,\)",
        ),
        (
            lambda: discounted_returns(jnp.zeros(5), jnp.zeros(5), jnp.ones(5)),
            "gamma must be a scalar",
        ),
        (
            lambda: truncation_aware_returns(
                jnp.zeros((5, 2)), jnp.zeros((5,)), jnp.zeros((5, 2)), jnp.zeros((5, 2)), 0.9
            ),
            r"next_values\(5,\)",
        ),
        (
            lambda: gae(*[jnp.zeros((6, 2))] * 4, jnp.zeros((2, 6)), 0.9, 0.9),
            r"truncated\(2, 6\)",
        ),
        (lambda: gae(*[jnp.zeros(6)] * 5, 0.9, jnp.ones(2)), "lambda_ must be a scalar"),
        (lambda: normalize_advantages(jnp.zeros((4, 2)), jnp.ones(4)), "mask has shape"),
        (
            lambda: surrogate_loss(jnp.zeros(4), jnp.zeros(4), jnp.zeros((4, 1))),
            r"advantages\(4, 1\)",
        ),
        (lambda: explained_variance(jnp.zeros(3), jnp.zeros(4)), r"predictions\(3,\)"),
    ],
)
def test_bad_input_raises(call, match):
    with pytest.raises((AssertionError, ValueError), match=match):
        call()


def test_docstring_examples_run():
    result = doctest.testmod(estimators, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
