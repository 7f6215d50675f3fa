"""Recurrent (GRU) policies: the trajectory Fisher through the recurrence, resets, training.

The references are built another way: a Python loop over environments and steps (one
network call per step, resets written out), dense Jacobians of per-trajectory
log-probabilities and the dense Hessian of the mean KL, in float64.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import npgjax
from npgjax.rl import get_config, make_networks, make_train, make_trainer
from npgjax.rl.algos.npg import segment_log_prob_fn
from npgjax.rl.rollout import collect

T, E, H = 5, 2, 3
# env 0: episodes end at t = 1 and t = 3, the third is cut by the rollout's end;
# env 1: one episode ends at t = 2, the second is cut.
DONE = np.zeros((T, E), bool)
DONE[1, 0] = DONE[3, 0] = DONE[2, 1] = True


@functools.cache
def _problem(env: str):
    """A small GRU policy at a generic point, and a float64 [T*E] batch sampled from it."""
    cfg = get_config(env, network="gru", num_envs=E, num_steps=T, hidden=(H,))
    trainer = make_trainer(cfg)
    params = trainer.init(jax.random.PRNGKey(0)).pi_params
    k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(1), 4)
    leaves, tree = jax.tree.flatten(params)
    noise = jax.random.split(k1, len(leaves))
    params = jax.tree.unflatten(tree, [
        (x + 0.4 * jax.random.normal(k, x.shape)).astype(jnp.float64)
        for x, k in zip(leaves, noise, strict=True)])
    obs_dim = trainer.env.obs_shape[0]
    batch = {"obs": jax.random.normal(k2, (T * E, obs_dim), jnp.float64),
             "carry": jax.random.normal(k3, (T * E, H), jnp.float64),
             "done": jnp.asarray(DONE.reshape(-1))}
    batch["actions"] = trainer.model.dist_fn(params, batch).sample(k4)
    return trainer, params, batch


def _gru_step(p, h, x):
    """The network by hand: tanh(dense) torso, GRU cell, linear head (flax's formulas)."""
    def dense(q, v):
        return v @ q["kernel"] + q.get("bias", 0.0)

    q = p["params"]
    x = jnp.tanh(dense(q["torso"]["layers_0"]["Dense_0"], x))
    c = q["GRUCell_0"]
    r = jax.nn.sigmoid(dense(c["ir"], x) + dense(c["hr"], h))
    z = jax.nn.sigmoid(dense(c["iz"], x) + dense(c["hz"], h))
    n = jnp.tanh(dense(c["in"], x) + r * dense(c["hn"], h))
    h = (1.0 - z) * n + z * h
    return h, dense(q["Dense_0"], h)


def _reference(params0, batch, discrete):
    """Per-step distribution parameters and per-episode log-probs by a plain Python loop."""
    obs = batch["obs"].reshape(T, E, -1)
    h0 = batch["carry"].reshape(T, E, -1)[0]
    act = batch["actions"].reshape((T, E) + batch["actions"].shape[1:])

    def run(p):
        outs, segs = [], []
        for e in range(E):
            h, seg = h0[e], 0.0
            for t in range(T):
                h, out = _gru_step(p["net"], h, obs[t, e])
                if discrete:
                    lp = jax.nn.log_softmax(out)[act[t, e]]
                else:
                    s = jnp.exp(p["log_std"])
                    lp = jnp.sum(-0.5 * ((act[t, e] - out) / s) ** 2 - p["log_std"]
                                 - 0.5 * jnp.log(2 * jnp.pi))
                outs.append(out)
                seg = seg + lp
                if DONE[t, e]:  # the episode ends: record it and start afresh
                    segs.append(seg)
                    h, seg = jnp.zeros_like(h), 0.0
            if not DONE[T - 1, e]:
                segs.append(seg)
        # the loop went env by env; the batch is time-major
        outs = jnp.stack(outs).reshape((E, T) + outs[0].shape).swapaxes(0, 1)
        return outs.reshape((T * E,) + outs.shape[2:]), jnp.stack(segs)

    return run


def _kl(out0, out, p0, p, discrete):
    if discrete:
        lq0, lq = jax.nn.log_softmax(out0), jax.nn.log_softmax(out)
        return jnp.sum(jnp.exp(lq0) * (lq0 - lq), axis=-1)
    ls0, ls = p0["log_std"], p["log_std"]
    return jnp.sum(ls - ls0 + (jnp.exp(2 * ls0) + (out0 - out) ** 2)
                   / (2 * jnp.exp(2 * ls)) - 0.5, axis=-1)


def test_trajectory_fisher_of_gru_matches_dense_references(x64):
    # Categorical actions here; the Gaussian head's Fisher is the core's (test_fisher) and
    # test_every_algorithm_accepts_gru traces a Gaussian GRU policy's update.
    trainer, params, batch = _problem("MemoryChain-bsuite")
    discrete = trainer.env.discrete
    theta0, unravel = ravel_pytree(params)

    def run(th):  # eager: cheaper than compiling the unrolled loop's derivatives
        return _reference(params, batch, discrete)(unravel(th))

    out0, seg0 = run(theta0)
    dist = trainer.model.dist_fn(params, batch)  # the replay through lax.scan
    np.testing.assert_allclose(dist.logits if discrete else dist.mean, out0, rtol=1e-10)

    seg, mask = npgjax.segment_log_probs(jnp.zeros((T, E)), jnp.asarray(DONE))
    got = segment_log_prob_fn(trainer.model)(params, batch)[mask]
    np.testing.assert_allclose(got, seg0, rtol=1e-10)

    vs = jax.random.normal(jax.random.PRNGKey(2), (3, theta0.size), jnp.float64)

    # Empirical trajectory Fisher: mean over episodes of s_k s_k^T, s_k = grad log p(tau_k).
    S = jax.jacrev(lambda th: run(th)[1])(theta0)  # [K, P]
    F_emp = S.T @ S / S.shape[0]
    fvp = npgjax.fisher_vector_product(segment_log_prob_fn(trainer.model), params, batch,
                                       mask=mask.astype(jnp.float64))
    for v in vs:
        np.testing.assert_allclose(ravel_pytree(fvp(unravel(v)))[0], F_emp @ v,
                                   rtol=1e-8, atol=1e-10)

    # Analytic Fisher: the Hessian of the mean per-step KL through the recurrence.
    def mean_kl(th):
        return jnp.mean(_kl(out0, run(th)[0], params, unravel(th), discrete))

    # H v by forward-over-reverse through the loop: the dense Hessian's rows are not
    # needed, only its products with the three test vectors (a P x P jax.hessian, eager,
    # took most of this test's time).
    afvp = npgjax.analytic_fisher_vector_product(trainer.model.dist_fn, params, batch)
    for v in vs:
        hv = jax.jvp(jax.grad(mean_kl), (theta0,), (v,))[1]
        np.testing.assert_allclose(ravel_pytree(afvp(unravel(v)))[0], hv,
                                   rtol=1e-8, atol=1e-10)
        assert np.linalg.norm(hv) > 1e-3 * np.linalg.norm(v)  # not vacuous
    assert np.linalg.norm(F_emp) > 1e-3


def test_rollout_resets_hidden_state_and_replay_matches_it():
    """Leaking the hidden state across episodes changes the log-probs: the rollout resets
    it after every episode end, and the update's replay reproduces the rollout exactly."""
    Tr, Er = 20, 3  # MemoryChain episodes last 6 steps: ends at t = 5, 11, 17
    cfg = get_config("MemoryChain-bsuite", network="gru", num_envs=Er, num_steps=Tr,
                     hidden=(8,))
    trainer = make_trainer(cfg)
    state = trainer.init(jax.random.PRNGKey(0))
    leaves, tree = jax.tree.flatten(state.pi_params)
    params = jax.tree.unflatten(tree, [x + 0.5 * jax.random.normal(jax.random.PRNGKey(i),
                                                                   x.shape)
                                       for i, x in enumerate(leaves)])
    net = make_networks("gru", trainer.env.obs_shape, trainer.env.action_dim, hidden=(8,))[0]

    def policy(o, h):
        h, out = net.apply(params["net"], h, o)
        return npgjax.Categorical(out), h

    h0 = jax.random.normal(jax.random.PRNGKey(3), (Er, 8))  # a state carried in from before
    carry = (state.env_state, state.obs, state.ep_return, state.ep_length, h0)
    carry, traj = jax.jit(lambda c: collect(trainer.env, policy, lambda o: o, c,
                                            jax.random.PRNGKey(4), Tr))(carry)
    done = np.asarray(traj["done"])
    assert done[5].all() and done[11].all() and done.sum() == 3 * Er
    np.testing.assert_array_equal(traj["carry"][0], h0)
    after = np.asarray(traj["carry"])[1:][done[:-1]]
    assert np.all(after == 0) and after.shape[0] == 3 * Er  # reset after every end
    flat = {k: traj[k].reshape((Tr * Er,) + traj[k].shape[2:])
            for k in ("obs", "actions", "carry", "done")}
    replay = trainer.model.log_prob_fn(params, flat).reshape(Tr, Er)
    np.testing.assert_allclose(replay, traj["old_logp"], atol=1e-5)
    leaky = trainer.model.log_prob_fn(params, dict(flat, done=jnp.zeros_like(flat["done"])))
    gap = np.abs(np.asarray(leaky).reshape(Tr, Er) - np.asarray(traj["old_logp"]))
    assert gap[:6].max() < 1e-5 and gap[6:].max() > 1e-3
    assert np.abs(np.asarray(carry[4])).min() > 0  # mid-episode at the end: carried on


def test_gru_training_under_jit_and_vmap_over_seeds():
    cfg = get_config("MemoryChain-bsuite", network="gru", num_envs=4, num_steps=12,
                     hidden=(8,), total_timesteps=96, vf_epochs=1, eval_every=1,
                     eval_episodes=3)
    state, m = jax.jit(jax.vmap(make_train(cfg)))(jax.random.split(jax.random.PRNGKey(0), 2))
    assert state.memory["pi"].shape == (2, 4, 8) and state.memory["vf"].shape == (2, 4, 8)
    assert m["eval_return"].shape == (2, 2) and np.isfinite(m["eval_return"]).all()
    assert np.isfinite(m["kl"]).all() and (np.asarray(m["kl"]) > 0).all()
    assert np.isfinite(m["predicted_kl"]).all()
    a, b = (jax.tree.leaves(jax.tree.map(lambda x: x[i], state.pi_params)) for i in (0, 1))
    assert any(not np.allclose(x, y) for x, y in zip(a, b, strict=True))  # seeds differ
    for leaf in jax.tree.leaves(state.pi_params):
        assert np.isfinite(leaf).all()


@pytest.mark.parametrize("env,algo,extra", [
    ("MemoryChain-bsuite", "vpg", {}),
    ("MemoryChain-bsuite", "enac", {}), ("MemoryChain-bsuite", "npg", {"fisher": "trajectory"}),
    ("Pendulum-v1", "npg", {"fisher": "empirical"}), ("Pendulum-v1", "trpo", {})])
def test_every_algorithm_accepts_gru(env, algo, extra):
    cfg = get_config(env, algo, network="gru", num_envs=2, num_steps=8, hidden=(4,),
                     vf_epochs=1, **extra)
    trainer = make_trainer(cfg)
    state = trainer.init(jax.random.PRNGKey(0))
    new, metrics = jax.eval_shape(trainer.update, state)  # traces the whole update
    assert jax.tree.structure(new) == jax.tree.structure(state)
    assert metrics["kl"].shape == ()


def test_act_and_evaluation_carry_the_hidden_state():
    cfg = get_config("MemoryChain-bsuite", network="gru", num_envs=2, num_steps=8,
                     hidden=(4,))
    trainer = make_trainer(cfg)
    state = trainer.init(jax.random.PRNGKey(0))
    obs = jnp.ones((3, 3))
    with pytest.raises(ValueError, match="needs carry="):
        trainer.act(state.pi_params, state.obs_stats, obs)
    a, h = trainer.act(state.pi_params, state.obs_stats, obs, carry=trainer.init_carry(3))
    assert a.shape == (3,) and h.shape == (3, 4) and np.abs(np.asarray(h)).max() > 0
    mlp = make_trainer(cfg.replace(network="mlp"))
    s2 = mlp.init(jax.random.PRNGKey(0))
    a2, c2 = mlp.act(s2.pi_params, s2.obs_stats, obs, carry=mlp.init_carry(3))
    assert a2.shape == (3,) and c2 == ()
    assert mlp.act(s2.pi_params, s2.obs_stats, obs).shape == (3,)


def test_recurrent_batch_without_time_axis_is_a_clear_error(x64):
    trainer, params, batch = _problem("MemoryChain-bsuite")
    one_step = {k: v[:E] for k, v in batch.items()}  # [E, ...]: no time axis
    with pytest.raises(ValueError, match="needs a batch with a time axis"):
        trainer.model.dist_fn(params, one_step)
    with pytest.raises(ValueError, match="needs keys 'obs', 'carry' and 'done'"):
        trainer.model.log_prob_fn(params, {"obs": batch["obs"], "actions": batch["actions"]})
    with pytest.raises(ValueError, match="needs its hidden state"):
        trainer.model.dist(params, batch["obs"])


def test_config_errors_for_recurrent_and_trajectory_options():
    with pytest.raises(ValueError, match="fisher_fraction must be 1"):
        get_config("MemoryChain-bsuite", network="gru", fisher_fraction=0.5)
    with pytest.raises(ValueError, match="fisher_fraction must be 1"):
        get_config("CartPole-v1", fisher="trajectory", fisher_fraction=0.5)
    with pytest.raises(ValueError, match="'analytic', 'empirical' or 'trajectory'"):
        get_config("CartPole-v1", fisher="episodic")


def test_obs_keep_wrapper_config_and_cli():
    from npgjax.cli.args import build_parser, parse_set
    from npgjax.rl import make_env

    full, part = make_env("CartPole-v1"), make_env("CartPole-v1", obs_keep=(2, 0))
    assert part.obs_shape == (2,) and part.name == "CartPole-v1"
    k = jax.random.PRNGKey(0)
    o1, s1 = full.env.reset(k, full.params)
    o2, s2 = part.env.reset(k, part.params)
    np.testing.assert_array_equal(o2, o1[jnp.array([2, 0])])
    for t in range(12):  # past the first episode end under a constant action
        kt = jax.random.fold_in(k, t)
        o1, s1, r1, *_, i1 = full.env.step(kt, s1, 1, full.params)
        o2, s2, r2, *_, i2 = part.env.step(kt, s2, 1, part.params)
        np.testing.assert_array_equal(o2, o1[jnp.array([2, 0])])
        np.testing.assert_array_equal(i2["final_observation"],
                                      i1["final_observation"][jnp.array([2, 0])])
    low = np.asarray(part.env.observation_space(part.params).low)
    full_low = np.asarray(full.env.observation_space(full.params).low)
    np.testing.assert_array_equal(low, full_low[[2, 0]])
    with pytest.raises(ValueError, match=r"indices must be in 0\.\.3 \(bad: \[4\]\)"):
        get_config("CartPole-v1", obs_keep=(0, 4))
    with pytest.raises(ValueError, match="needs flat observations"):
        make_env("Catch-bsuite", obs_keep=(0,))
    cfg = get_config("CartPole-v1", obs_keep=[0, 2])
    assert cfg.obs_keep == (0, 2) and make_trainer(cfg).env.obs_shape == (2,)
    args = build_parser().parse_args(["--set", "max_kl=0.02", "--obs-keep", "0,2"])
    assert parse_set(args.overrides) == {"max_kl": 0.02, "obs_keep": (0, 2)}
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--obs-keep", "0,x"])


def test_loaded_gru_policy_acts_with_carry(tmp_path):
    from npgjax.rl import evaluate_policy, load_policy, make_train, save_policy

    cfg = get_config("MemoryChain-bsuite", network="gru", num_envs=2, num_steps=8,
                     hidden=(4,), total_timesteps=32)
    state, _ = jax.jit(make_train(cfg))(jax.random.PRNGKey(0))
    policy = load_policy(save_policy(tmp_path, cfg, state))
    assert policy.recurrent
    with pytest.raises(ValueError, match="needs carry="):
        policy.act(jnp.ones(3))
    obs = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 3))
    carry = policy.init_carry((2, 3))
    assert carry.shape == (2, 3, 4)
    a, h = jax.jit(lambda o, c: policy.act(o, carry=c))(obs, carry)
    assert a.shape == (2, 3) and h.shape == (2, 3, 4)
    a1, h1 = policy.act(obs[1, 2], carry=policy.init_carry())  # one observation
    assert int(a1) == int(a[1, 2]) and np.allclose(h1, h[1, 2], atol=1e-6)
    # The carry is used: a second step from h differs from one from zeros.
    _, h2 = policy.act(obs, carry=h)
    assert not np.allclose(h2, h)
    ret, length = jax.jit(evaluate_policy, static_argnums=2)(policy, jax.random.PRNGKey(2), 4)
    assert ret.shape == (4,) and bool(jnp.all(length > 0)) and bool(jnp.all(jnp.isfinite(ret)))
