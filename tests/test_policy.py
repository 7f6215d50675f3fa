"""npgjax.rl.load_policy / save_policy / Policy.act / evaluate_policy.

The states are fresh ``trainer.init`` states with non-trivial observation statistics
(no training needed to check the plumbing); the trained CartPole policy is checked in
tests/test_evaluate_cli.py.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from npgjax.rl import (
    Policy,
    evaluate_policy,
    get_config,
    load_policy,
    make_networks,
    make_trainer,
    save_policy,
)
from npgjax.rl.checkpoint import CheckpointError
from npgjax.rl.normalize import RunningStats, normalize

SEEDS = 3


def _state(trainer, seeds=SEEDS):
    """Initial states of ``seeds`` seeds, with observation statistics that matter."""
    state = jax.vmap(trainer.init)(jax.random.split(jax.random.PRNGKey(1), seeds))
    shape = state.obs_stats.mean.shape
    stats = RunningStats(0.5 * jax.random.normal(jax.random.PRNGKey(2), shape),
                         jnp.full(shape, 4.0), jnp.full((seeds,), 100.0))
    return state._replace(obs_stats=stats)


@pytest.fixture(scope="module")
def cartpole(tmp_path_factory):
    cfg = get_config("CartPole-v1", num_envs=2, num_steps=8, hidden=(16,))
    trainer = make_trainer(cfg)
    state = _state(trainer)
    run = save_policy(tmp_path_factory.mktemp("cartpole"), trainer, state)
    return cfg, trainer, state, run


@pytest.fixture(scope="module")
def pendulum(tmp_path_factory):
    cfg = get_config("Pendulum-v1", num_envs=2, num_steps=8, hidden=(16,),
                     normalize_obs=True, env_params={"max_steps_in_episode": 50})
    trainer = make_trainer(cfg)
    state = _state(trainer, 2)
    # a large mean so that some actions fall outside [-1, 1] and must be clipped
    net = jax.tree.map(lambda x: 300.0 * x, state.pi_params["net"])
    state = state._replace(pi_params={**state.pi_params, "net": net})
    run = save_policy(tmp_path_factory.mktemp("pendulum"), cfg, state)
    return cfg, state, run


def _manual_action(cfg, state, seed, obs):
    """The deterministic action, built independently of Policy and trainer.act."""
    pi_net, _ = make_networks(cfg.network, obs.shape[-1:], 2 if cfg.env == "CartPole-v1"
                              else 1, hidden=cfg.hidden, activation=cfg.activation)
    params = jax.tree.map(lambda x: x[seed], state.pi_params)
    stats = jax.tree.map(lambda x: x[seed], state.obs_stats)
    out = pi_net.apply(params["net"], normalize(stats, obs))
    if cfg.env == "CartPole-v1":
        return jnp.argmax(out, -1)
    return -2.0 + (jnp.clip(out, -1, 1) + 1) * 0.5 * 4.0  # Pendulum: [-1, 1] -> [-2, 2]


def test_files_are_safe_and_round_trip(cartpole):
    cfg, _, state, run = cartpole
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.json", "checkpoint.msgpack"]
    meta = json.loads((run / "checkpoint.json").read_text())
    assert meta["kind"] == "policy" and meta["seeds"] == SEEDS
    assert meta["config"]["hidden"] == [16] and meta["config"]["env"] == "CartPole-v1"
    policy = load_policy(run, seed=2)
    assert isinstance(policy, Policy) and policy.config == cfg
    assert policy.env.name == "CartPole-v1" and policy.env.obs_shape == (4,)
    for a, b in zip(jax.tree.leaves((policy.params, policy.obs_stats)),
                    jax.tree.leaves(jax.tree.map(lambda x: x[2],
                                                 (state.pi_params, state.obs_stats))),
                    strict=True):
        np.testing.assert_array_equal(a, b)


def test_act_deterministic_single_and_batched(cartpole):
    cfg, trainer, state, run = cartpole
    policy = load_policy(run, seed=1)
    obs = jax.random.normal(jax.random.PRNGKey(3), (2, 5, 4))
    want = _manual_action(cfg, state, 1, obs.reshape(10, 4)).reshape(2, 5)
    assert not np.all(want == want[0, 0])  # the check can tell actions apart
    np.testing.assert_array_equal(policy.act(obs), want)
    np.testing.assert_array_equal(jax.jit(policy.act)(obs), want)
    assert policy.act(obs[0, 0]).shape == () and int(policy.act(obs[0, 0])) == int(want[0, 0])
    params = jax.tree.map(lambda x: x[1], state.pi_params)
    stats = jax.tree.map(lambda x: x[1], state.obs_stats)
    np.testing.assert_array_equal(trainer.act(params, stats, obs[0]), want[0])


def test_act_sampled_with_a_key(cartpole):
    _, _, _, run = cartpole
    policy = load_policy(run)
    obs = jnp.zeros((4000, 4))
    a = policy.act(obs, jax.random.PRNGKey(0))
    b = policy.act(obs, jax.random.PRNGKey(0))
    np.testing.assert_array_equal(a, b)  # pure: same key, same actions
    # an untrained policy is close to uniform: both actions occur often
    assert 0.4 < float(jnp.mean(a)) < 0.6
    assert set(np.unique(np.asarray(a)).tolist()) == {0, 1}


def test_policy_is_a_pytree_for_jit_and_vmap(cartpole):
    _, _, _, run = cartpole
    stacked = load_policy(run, seed=[0, 2])
    obs = jax.random.normal(jax.random.PRNGKey(4), (7, 4))
    both = jax.jit(jax.vmap(lambda p, o: p.act(o), in_axes=(0, None)))(stacked, obs)
    for i, s in enumerate([0, 2]):
        np.testing.assert_array_equal(both[i], load_policy(run, seed=s).act(obs))


def test_box_actions_are_scaled_and_clipped(pendulum):
    cfg, state, run = pendulum
    policy = load_policy(run, seed=1)
    obs = jax.random.normal(jax.random.PRNGKey(5), (64, 3))
    act = policy.act(obs)
    assert act.shape == (64, 1)
    np.testing.assert_allclose(act, _manual_action(cfg, state, 1, obs), rtol=1e-6, atol=1e-6)
    assert float(jnp.max(jnp.abs(act))) <= 2.0
    assert float(jnp.mean(jnp.abs(act) == 2.0)) > 0.1  # clipped at the bounds
    assert policy.env.max_steps == 50  # the env params come back from the checkpoint
    sampled = policy.act(obs, jax.random.PRNGKey(0))
    assert float(jnp.max(jnp.abs(sampled))) <= 2.0


def test_evaluate_policy_matches_the_training_evaluation(cartpole):
    """With the trainer's key, evaluate_policy reproduces trainer.evaluate exactly."""
    _, trainer, state, run = cartpole
    one = jax.tree.map(lambda x: x[0], state)
    want = trainer.evaluate(one)
    key = jax.random.fold_in(one.key, 0x5EED)  # the trainer's evaluation key
    ret, length = jax.jit(lambda p: evaluate_policy(p, key, trainer.config.eval_episodes))(
        load_policy(run))
    assert float(jnp.mean(ret)) == float(want["eval_return"])
    assert float(jnp.mean(length)) == float(want["eval_length"])
    ret_s, _ = evaluate_policy(load_policy(run), key, 8, stochastic=True, max_steps=5)
    assert ret_s.shape == (8,) and float(jnp.max(ret_s)) <= 5


def test_wrong_observation_shape(cartpole):
    policy = load_policy(cartpole[3])
    for bad in (jnp.zeros(3), jnp.zeros((2, 5)), jnp.zeros(())):
        with pytest.raises(ValueError, match=r"observations of shape \(4,\)"):
            policy.act(bad)


def test_bad_run_dirs_and_seeds(cartpole, tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_policy(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_policy(tmp_path / "missing")
    with pytest.raises(ValueError, match="out of range"):
        load_policy(cartpole[3], seed=SEEDS)
    with pytest.raises(ValueError, match="out of range"):
        load_policy(cartpole[3], seed=[])
    with pytest.raises(ValueError, match="is a file"):
        (tmp_path / "f").write_text("")
        save_policy(tmp_path / "f", cartpole[1], cartpole[2])


def test_state_of_another_config_is_refused(cartpole, tmp_path):
    other = make_trainer(get_config("CartPole-v1", num_envs=2, num_steps=8, hidden=(8,)))
    msg = r"pi_params/net/.* is float32\[3, 16\], expected float32\[3, 8\]"
    with pytest.raises(CheckpointError, match=msg):
        save_policy(tmp_path, other, cartpole[2])


def test_environment_object_needs_env(tmp_path):
    from gymnax.environments.classic_control import CartPole

    cfg = get_config(CartPole(), num_envs=2, num_steps=8, hidden=(8,))
    trainer = make_trainer(cfg)
    run = save_policy(tmp_path, trainer, trainer.init(jax.random.PRNGKey(0)))  # one seed
    with pytest.raises(CheckpointError, match=r"environment object.*env="):
        load_policy(run)
    with pytest.raises(CheckpointError, match="does not match"):
        load_policy(run, env=get_config("Acrobot-v1").env)
    policy = load_policy(run, env=CartPole())
    assert policy.act(jnp.zeros((3, 4))).shape == (3,)


def test_evaluate_policy_on_box_actions_maps_them_once(pendulum):
    """evaluate_policy steps the env with exactly policy.act's actions (already in the
    env's range), replayed here step by step with the same keys."""
    _, _, run = pendulum
    policy = load_policy(run)
    spec, n, steps = policy.env, 3, 5
    key = jax.random.PRNGKey(9)
    ret, _ = evaluate_policy(policy, key, n, max_steps=steps)
    k_reset, k = jax.random.split(key)
    obs, state = jax.vmap(spec.env.reset, in_axes=(0, None))(jax.random.split(k_reset, n),
                                                             spec.params)
    total = jnp.zeros(n)
    for _ in range(steps):
        k, _, k_env = jax.random.split(k, 3)
        obs, state, reward, _, _, _ = jax.vmap(spec.env.step, in_axes=(0, 0, 0, None))(
            jax.random.split(k_env, n), state, policy.act(obs), spec.params)
        total = total + reward
    np.testing.assert_allclose(ret, total, rtol=1e-5)
