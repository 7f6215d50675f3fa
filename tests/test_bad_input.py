"""Bad input: a clear ValueError outside jit, a zero update and a status flag under jit.

No path turns the parameters into NaN. Each case here came from an adversarial pass
over the optimizers (issue 12).
"""

from __future__ import annotations

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import npgjax
from npgjax import Status

from .conftest import make_problem

N = 16


def _setup(head="categorical"):
    params, batch, dist_fn, log_prob_fn = make_problem(head, n=N, dtype=jnp.float32)
    batch = dict(batch, adv=jnp.sin(jnp.arange(N) * 1.3), old_logp=log_prob_fn(params, batch))

    def loss_fn(p, b):
        return npgjax.surrogate_loss(log_prob_fn(p, b), b["old_logp"], b["adv"])

    return params, batch, dist_fn, log_prob_fn, loss_fn


def _zero(tree) -> bool:
    return all(bool(jnp.all(x == 0)) for x in jax.tree.leaves(tree))


def _has(status, bit) -> np.ndarray:
    return (np.asarray(status) & int(bit)) != 0


def _trpo_like(log_prob_fn, dist_fn, loss_fn, hp):
    """The RL layer's pattern: traced max_kl and damping, cg_tol=0, the line search."""
    return optax.chain(
        npgjax.precondition_by_fisher(
            dist_fn=dist_fn, max_kl=hp["max_kl"], damping=hp["damping"], cg_iters=10, cg_tol=0.0
        ),
        optax.scale(-1.0),
        npgjax.trust_region_line_search(loss_fn, npgjax.mean_kl(dist_fn), max_kl=hp["max_kl"]),
    )


def test_traced_bad_max_kl_and_damping_give_zero_update_and_flags():
    params, batch, dist_fn, log_prob_fn, loss_fn = _setup()
    hp = {
        "max_kl": jnp.array([0.01, jnp.nan, jnp.inf, -0.01, 0.0, 0.01, 0.01]),
        "damping": jnp.array([0.1, 0.1, 0.1, 0.1, 0.1, -0.1, jnp.nan]),
    }

    def step(hp):
        g = jax.grad(loss_fn)(params, batch)
        tx = _trpo_like(log_prob_fn, dist_fn, loss_fn, hp)
        u_trpo, s_trpo = tx.update(g, tx.init(params), params, batch=batch)
        npg = npgjax.precondition_by_fisher(log_prob_fn, max_kl=hp["max_kl"], damping=hp["damping"])
        u_npg, s_npg = npg.update(g, npg.init(params), params, batch=batch)
        return u_trpo, s_trpo, u_npg, s_npg

    u_trpo, s_trpo, u_npg, s_npg = jax.jit(jax.vmap(step))(hp)
    for u, s in ((u_trpo, s_trpo[0]), (u_npg, s_npg)):
        assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(u))
        assert not _zero(jax.tree.map(lambda x: x[0], u))
        for i in range(1, 7):
            assert _zero(jax.tree.map(lambda x, i=i: x[i], u)), i
        assert not bool(s.skipped[0]) and bool(jnp.all(s.skipped[1:]))
        assert _has(s.status, Status.BAD_MAX_KL).tolist() == [0, 1, 1, 1, 1, 0, 0]
        assert _has(s.status, Status.BAD_DAMPING).tolist() == [0, 0, 0, 0, 0, 1, 1]
    ls = s_trpo[2]
    assert bool(ls.accepted[0]) and not bool(jnp.any(ls.accepted[1:]))
    assert _has(ls.status, Status.BAD_MAX_KL).tolist() == [0, 1, 1, 1, 1, 0, 0]


def test_max_kl_schedule_reaching_inf_under_inject_hyperparams():
    params, batch, _, log_prob_fn, loss_fn = _setup()
    sched = lambda count: jnp.where(count > 0, jnp.inf, 0.01)
    tx = optax.inject_hyperparams(npgjax.npg, static_args=("log_prob_fn",))(
        log_prob_fn=log_prob_fn, max_kl=sched
    )
    step = jax.jit(lambda p, s, b: tx.update(jax.grad(loss_fn)(p, b), s, p, batch=b))
    state = tx.init(params)
    u, state = step(params, state, batch)
    assert not _zero(u)
    u, state = step(params, state, batch)
    pre = npgjax.diagnostics(state)
    assert _zero(u) and bool(pre["skipped"]) and _has(pre["status"], Status.BAD_MAX_KL)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0, 0.0])
def test_concrete_bad_max_kl_raises(bad):
    _, _, dist_fn, log_prob_fn, loss_fn = _setup()
    makers = [
        lambda: npgjax.precondition_by_fisher(log_prob_fn, max_kl=bad),
        lambda: npgjax.npg(log_prob_fn, max_kl=bad),
        lambda: npgjax.trpo(dist_fn, loss_fn, max_kl=bad),
        lambda: npgjax.trust_region_line_search(loss_fn, npgjax.mean_kl(dist_fn), max_kl=bad),
        lambda: npgjax.kl_guard(npgjax.mean_kl(dist_fn), max_kl=bad),
        lambda: npgjax.trust_region_scale(1.0, bad),
    ]
    for make in makers:
        with pytest.raises(ValueError, match="max_kl must be finite and positive"):
            make()
    with pytest.raises(ValueError, match="damping"):
        npgjax.precondition_by_fisher(log_prob_fn, damping=float("inf"))


def test_line_search_nan_step_gives_zero_update_and_flag():
    params, batch, dist_fn, _, loss_fn = _setup()
    ls = npgjax.trust_region_line_search(loss_fn, npgjax.mean_kl(dist_fn), max_kl=0.01)
    nan_step = jax.tree.map(lambda x: jnp.full_like(x, jnp.nan), params)
    for fn in (ls.update, jax.jit(ls.update)):
        u, s = fn(nan_step, ls.init(params), params, batch=batch)
        assert _zero(u) and not bool(s.accepted)
        assert _has(s.status, Status.NONFINITE_STEP)
    new, info = npgjax.backtracking_line_search(
        lambda p: loss_fn(p, batch), lambda q: 0.0 * loss_fn(q, batch), params, nan_step,
        max_kl=0.01,
    )
    assert not bool(info.accepted)
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(a, b)


def test_categorical_bad_actions():
    d = npgjax.Categorical(jnp.zeros((3, 4)))
    for bad in ([0, 1, 4], [0, -1, 2], [0.0, 1.5, 2.0], [0.0, np.nan, 1.0]):
        with pytest.raises(ValueError, match="actions"):
            d.log_prob(np.asarray(bad))
    np.testing.assert_allclose(d.log_prob(jnp.array([0.0, 1.0, 3.0])), np.log(0.25) * np.ones(3))
    lp = jax.jit(lambda a: d.log_prob(a))
    out = lp(jnp.array([0, 4, -1]))
    assert float(out[0]) == pytest.approx(np.log(0.25)) and bool(jnp.all(jnp.isnan(out[1:])))
    assert bool(jnp.isnan(jax.jit(lambda a: d.log_prob(a))(jnp.array([0.0, 1.5, 2.0]))[1]))


@pytest.mark.parametrize("bad_action", [3, -1])
def test_out_of_range_actions_under_jit_give_zero_update(bad_action):
    params, batch, dist_fn, log_prob_fn, loss_fn = _setup()
    bad = dict(batch, actions=batch["actions"].at[2].set(bad_action))
    npg = npgjax.npg(log_prob_fn, max_kl=0.01)
    trpo = npgjax.trpo(dist_fn, loss_fn, max_kl=0.01)

    @jax.jit
    def step(b):
        g = jax.grad(loss_fn)(params, b)
        return npg.update(g, npg.init(params), params, batch=b), trpo.update(
            g, trpo.init(params), params, batch=b
        )

    (u1, s1), (u2, s2) = step(bad)
    assert _zero(u1) and _zero(u2)
    assert bool(s1[0].skipped) and _has(s1[0].status, Status.NONFINITE_GRADIENT)
    assert bool(s2[0].skipped) and not bool(s2[2].accepted)


def test_gaussian_actions_that_would_broadcast_raise():
    params, batch, dist_fn, _, loss_fn = _setup("gaussian")
    one = dict(batch, actions=batch["actions"][:1])
    with pytest.raises(ValueError, match="not broadcast"):
        loss_fn(params, one)
    g = jax.grad(loss_fn)(params, batch)
    trpo = npgjax.trpo(dist_fn, loss_fn)
    with pytest.raises(ValueError, match="leading axis"):
        trpo.update(g, trpo.init(params), params, batch=one)
    # A distribution may still broadcast against the actions (a state-independent mean).
    d = npgjax.DiagGaussian(jnp.zeros((1, 3)), jnp.zeros(3))
    assert d.log_prob(jnp.zeros((5, 3))).shape == (5,)


def test_fisher_mask_negative_or_nan():
    params, batch, _, log_prob_fn, loss_fn = _setup()
    g = jax.grad(loss_fn)(params, batch)
    tx = npgjax.precondition_by_fisher(log_prob_fn, max_kl=0.01)
    for bad in (jnp.ones(N).at[0].set(-1.0), jnp.ones(N).at[0].set(jnp.nan)):
        with pytest.raises(ValueError, match="mask"):
            tx.update(g, tx.init(params), params, batch=batch, fisher_mask=bad)
        with pytest.raises(ValueError, match="mask"):
            npgjax.fisher_vector_product(log_prob_fn, params, batch, mask=bad)
    step = jax.jit(lambda m: tx.update(g, tx.init(params), params, batch=batch, fisher_mask=m))
    u, s = step(jnp.ones(N).at[0].set(-1.0))
    assert _zero(u) and bool(s.skipped) and _has(s.status, Status.BAD_MASK)
    u, s = step(jnp.ones(N))
    assert not _zero(u) and int(s.status) == 0


def test_captured_gradients_and_numpy_leaves_do_not_crash():
    params, batch, _, log_prob_fn, loss_fn = _setup()
    g = jax.grad(loss_fn)(params, batch)
    tx = npgjax.npg(log_prob_fn, max_kl=0.01)
    ref, _ = tx.update(g, tx.init(params), params, batch=batch)
    # A gradient closed over as a constant inside jit, and inside lax.scan.
    u = jax.jit(lambda w: tx.update(g, tx.init(w), w, batch=batch)[0])(params)

    def body(c, _):
        return c, tx.update(g, tx.init(params), params, batch=batch)[0]

    _, us = jax.lax.scan(body, 0.0, None, length=2)
    g_np = jax.tree.map(np.asarray, g)
    u_np, _ = tx.update(g_np, tx.init(params), params, batch=batch)
    # jit fuses what eager runs op by op; CG stops near a relative residual of 1e-4 here,
    # so the two float32 solves agree to about that in norm (1.6e-4 on a 2-core AMD EPYC
    # without AVX-512, below 1e-5 on others), not to float32's rounding per element.
    flat_ref = np.asarray(jax.flatten_util.ravel_pytree(ref)[0])
    for out in (u, jax.tree.map(lambda x: x[1], us), u_np):
        flat = np.asarray(jax.flatten_util.ravel_pytree(out)[0])
        assert np.linalg.norm(flat - flat_ref) <= 2e-3 * np.linalg.norm(flat_ref)
    # A NaN in such a concrete gradient is still caught with a clear error.
    nan_g = jax.tree.map(lambda x: np.asarray(x).copy() * np.nan, g)
    with pytest.raises(ValueError, match="gradient has a NaN"):
        jax.jit(lambda w: tx.update(nan_g, tx.init(w), w, batch=batch)[0])(params)


def test_update_before_init_and_non_scalar_loss():
    params, batch, dist_fn, log_prob_fn, loss_fn = _setup()
    g = jax.grad(loss_fn)(params, batch)
    txs = [
        npgjax.precondition_by_fisher(log_prob_fn),
        npgjax.npg(log_prob_fn),
        npgjax.trpo(dist_fn, loss_fn),
        npgjax.trust_region_line_search(loss_fn, npgjax.mean_kl(dist_fn), max_kl=0.01),
        npgjax.kl_guard(npgjax.mean_kl(dist_fn), max_kl=0.01),
    ]
    for tx in txs:
        for state in (None, ()):
            with pytest.raises(ValueError, match=r"tx.init\(params\) first"):
                tx.update(g, state, params, batch=batch)
    per_sample = lambda p, b: log_prob_fn(p, b) * b["adv"]
    trpo = npgjax.trpo(dist_fn, per_sample)
    with pytest.raises(ValueError, match="loss_fn must return a scalar"):
        trpo.update(g, trpo.init(params), params, batch=batch)


def test_non_finite_batch_sets_fisher_flag():
    params, batch, _, log_prob_fn, loss_fn = _setup()
    g = jax.grad(loss_fn)(params, batch)
    tx = npgjax.precondition_by_fisher(log_prob_fn, max_kl=0.01)
    bad = dict(batch, obs=batch["obs"].at[0, 0].set(jnp.inf))
    u, s = jax.jit(lambda b: tx.update(g, tx.init(params), params, batch=b))(bad)
    assert _zero(u) and bool(s.skipped) and _has(s.status, Status.NONFINITE_FISHER)
    assert npgjax.describe_status(s.status) == ["NONFINITE_FISHER"]
