"""The RL layer: learning, determinism, resumption, eNAC vs the Fisher solve, configs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import npgjax
from npgjax.rl import compiler_options, get_config, make_train, make_trainer
from npgjax.rl.algos.enac import enac_objective, segment_returns


def _train_chunked(cfg, keys, chunk=4):
    """Seeds vmapped, in jitted chunks of updates (as the CLI runs), metrics concatenated."""
    trainer = make_trainer(cfg)
    assert cfg.num_updates % chunk == 0
    step = jax.jit(jax.vmap(
        lambda s: jax.lax.scan(lambda s, _: trainer.update(s), s, None, length=chunk)
    ))
    state = jax.jit(jax.vmap(trainer.init))(keys)
    parts = []
    for _ in range(cfg.num_updates // chunk):
        state, m = step(state)
        parts.append(jax.device_get(m))
    return {k: np.concatenate([p[k] for p in parts], axis=1) for k in parts[0]}


def _small(env="CartPole-v1", algo="npg", **kw):
    base = dict(total_timesteps=12_288, num_envs=4, num_steps=64, vf_minibatch=0, vf_epochs=5)
    base.update(kw)
    return get_config(env, algo, **base)


@pytest.mark.parametrize("algo", ["npg", "trpo"])
def test_short_cartpole_run_improves_return(algo):
    cfg = _small(algo=algo)
    m = _train_chunked(cfg, jax.random.split(jax.random.PRNGKey(0), 2))
    r = np.asarray(m["rollout_return"])
    early, late = np.nanmean(r[:, :5]), np.nanmean(r[:, -5:])
    assert late > early + 30, (early, late)
    kl = np.asarray(m["kl"])
    assert np.all(np.isfinite(kl)) and kl.max() < 0.05
    if algo == "trpo":
        # The line search never accepts a measured KL above max_kl.
        assert kl.max() <= cfg.max_kl + 1e-6


def test_continuous_pendulum_learns_on_a_tiny_budget():
    cfg = get_config("Pendulum-v1", "npg", total_timesteps=24_576)
    m = _train_chunked(cfg, jax.random.split(jax.random.PRNGKey(1), 2))
    r = np.asarray(m["rollout_return"])
    assert np.nanmean(r[:, -4:]) > np.nanmean(r[:, :4]) + 100


def test_training_is_deterministic_and_resumable():
    cfg = _small(total_timesteps=2048, num_steps=32)
    trainer = make_trainer(cfg)
    key = jax.random.PRNGKey(3)

    def run(state, n):
        return jax.lax.scan(lambda s, _: trainer.update(s), state, None, length=n)

    # Programs of 4 and 2 updates compared bit for bit: compiled as the library compiles
    # (the suite's LLVM O0 may round two programs differently; tests/conftest.py).
    run = jax.jit(run, static_argnums=1, compiler_options=compiler_options())
    init = jax.jit(trainer.init)  # one compile, not one per eager operation
    s0 = init(key)
    full_state, full = run(s0, 4)
    again_state, again = run(init(key), 4)
    half_state, first = run(s0, 2)
    # Round-trip the state through host memory, as a checkpoint does.
    half_state = jax.tree.map(jnp.asarray, jax.device_get(half_state))
    end_state, second = run(half_state, 2)
    for k in full:
        np.testing.assert_array_equal(full[k], again[k])
        np.testing.assert_array_equal(full[k], np.concatenate([first[k], second[k]]))
    for a, b in zip(jax.tree.leaves(full_state), jax.tree.leaves(end_state), strict=True):
        np.testing.assert_array_equal(a, b)


def test_vmap_over_seeds_and_max_kl():
    cfg = _small(total_timesteps=1024, num_steps=32)
    train = jax.jit(jax.vmap(make_train(cfg)))
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    _, m = train(keys, {"max_kl": jnp.array([0.001, 0.03])})
    kl = np.asarray(m["kl"]).mean(1)
    assert kl[1] > 5 * kl[0]
    assert not np.array_equal(m["train_return"][0], m["train_return"][1])


@pytest.mark.parametrize("algo", ["vpg", "enac"])
def test_other_algorithms_run(algo):
    cfg = _small(algo=algo, total_timesteps=2048, num_steps=32)
    _, m = jax.jit(make_train(cfg))(jax.random.PRNGKey(0))
    assert np.all(np.isfinite(np.asarray(m["kl"])))
    assert np.asarray(m["kl"]).max() > 0


def test_enac_least_squares_equals_fisher_solve(x64):
    """eNAC's regression weights equal the centred trajectory-Fisher solve on one batch."""
    T, E, obs_dim, n_act = 12, 6, 2, 2
    key = jax.random.PRNGKey(0)
    k1, k2, k3, k4, k5 = jax.random.split(key, 5)
    params = {"w": 0.3 * jax.random.normal(k1, (obs_dim, n_act)), "b": jnp.zeros(n_act)}
    obs = jax.random.normal(k2, (T, E, obs_dim))
    policy = lambda p, o: npgjax.Categorical(o @ p["w"] + p["b"])
    actions = policy(params, obs).sample(k3)
    rewards = jax.random.normal(k4, (T, E))
    terminated = jax.random.bernoulli(k5, 0.25, (T, E))
    truncated = jnp.zeros((T, E), bool)
    next_values = jnp.zeros((T, E))
    R, mask = segment_returns(rewards, next_values, terminated, truncated, 0.97)
    batch = {"obs": obs.reshape(T * E, obs_dim), "actions": actions.reshape(-1),
             "done": terminated.reshape(-1)}

    def seg_lp(p, b):
        lp = policy(p, b["obs"]).log_prob(b["actions"]).reshape(T, E)
        return npgjax.segment_log_probs(lp, b["done"].reshape(T, E))[0]

    # Route 1: least squares of returns on [scores, 1] over the valid segments.
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    Psi = jax.jit(jax.jacrev(lambda f: seg_lp(unravel(f), batch)))(flat)[np.asarray(mask)]
    X = jnp.concatenate([Psi, jnp.ones((Psi.shape[0], 1))], axis=1)
    coef, *_ = jnp.linalg.lstsq(X, R[np.asarray(mask)], rcond=None)
    w_ls = coef[:-1]
    # Route 2: the core's centred empirical-Fisher preconditioner on the eNAC gradient
    # (under jit: one compile instead of one per eager operation, most of the time here).
    tx = npgjax.precondition_by_fisher(seg_lp, centered=True, damping=0.0,
                                       solver=npgjax.cholesky_solve)

    @jax.jit
    def route_2(params):
        g = jax.grad(lambda p: enac_objective(seg_lp(p, batch), R, mask))(params)
        return tx.update(g, tx.init(params), params, batch=batch, fisher_mask=mask)[0]

    nat = route_2(params)
    # The preconditioned loss gradient is minus the ascent direction w.
    assert int(mask.sum()) > flat.size + 5
    np.testing.assert_allclose(-jax.flatten_util.ravel_pytree(nat)[0], w_ls, rtol=1e-6,
                               atol=1e-9)


def test_config_errors_are_clear():
    with pytest.raises(ValueError, match="unknown environment"):
        get_config("NoSuchEnv-v0")
    with pytest.raises(ValueError, match="unknown algo"):
        get_config("CartPole-v1", "ppo")
    with pytest.raises(ValueError, match="unknown option 'max_k1'"):
        get_config("CartPole-v1", max_k1=0.1)
    with pytest.raises(ValueError, match="max_kl"):
        get_config("CartPole-v1", max_kl=0.0)
    with pytest.raises(ValueError, match="vf_minibatch"):
        get_config("CartPole-v1", num_envs=2, num_steps=10, vf_minibatch=3)
    # A default minibatch that does not fit the chosen batch falls back to the batch.
    assert get_config("CartPole-v1", num_envs=2, num_steps=10).vf_minibatch == 0
    with pytest.raises(ValueError, match="hparam"):
        make_trainer(_small()).init(jax.random.PRNGKey(0), {"lr": 1.0})


def test_any_gymnax_env_with_box_or_discrete_actions_builds():
    # Discrete actions train throughout the suite (CartPole, Acrobot, Catch, DeepSea);
    # here a Box action space with bounds other than Pendulum's.
    cfg = get_config("MountainCarContinuous-v0", total_timesteps=64, num_envs=2, num_steps=16)
    _, m = jax.jit(make_train(cfg))(jax.random.PRNGKey(0))
    assert m["kl"].shape == (2,) and np.all(np.isfinite(np.asarray(m["kl"])))


def test_core_does_not_import_rl():
    import pathlib

    root = pathlib.Path(npgjax.__file__).parent
    for path in root.glob("*.py"):
        if path.name in ("train.py", "evaluate.py"):  # the CLI entry points: the top layer
            continue
        text = path.read_text()
        assert "npgjax.rl" not in text.replace("npgjax.rl`", ""), path.name


def test_gymnax_plotting_imports_are_deferred_and_still_work():
    """seaborn/pyplot are not imported with the trainer, yet work when used."""
    import subprocess
    import sys

    code = """
import sys
from npgjax.rl import get_config, make_trainer
make_trainer(get_config("CartPole-v1", num_envs=2, num_steps=8))
assert "scipy" not in sys.modules and "pandas" not in sys.modules, "seaborn was imported"
assert "matplotlib.rcsetup" not in sys.modules, "matplotlib was imported"
import gc
assert gc.isenabled(), "the import left the garbage collector paused"
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import seaborn as sns
fig, ax = plt.subplots()
ax.plot([0, 1], color=sns.color_palette()[0])
from gymnax.environments.misc import pong
assert pong.sns.color_palette() == sns.color_palette()
assert matplotlib.pyplot.figure is plt.figure
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


@pytest.mark.parametrize("shape", [(4, 64), (64, 64), (64, 2), (3, 5, 7)])
def test_orthogonal_init_equals_jax_initializer(shape):
    import flax.linen as nn

    from npgjax.rl.networks import orthogonal

    for seed in range(3):
        k = jax.random.PRNGKey(seed)
        ours = orthogonal(1.5)(k, shape)
        ref = nn.initializers.orthogonal(1.5)(k, shape, jnp.float32)
        np.testing.assert_array_equal(ours, ref)
    keys = jax.random.split(jax.random.PRNGKey(3), 4)
    batched = jax.jit(jax.vmap(lambda k: orthogonal(1.5)(k, shape)))(keys)
    for k, w in zip(keys, batched, strict=True):
        np.testing.assert_allclose(w, orthogonal(1.5)(k, shape), atol=1e-6)


def test_vmapped_init_over_seeds_does_not_deadlock():
    """Regression: flax's orthogonal init under vmap ran several batched LAPACK QRs at
    once, which deadlocked XLA's CPU pool within ~10 calls on 2 cores. The check runs in
    a subprocess with a watchdog, so a hang fails the test instead of blocking it."""
    import subprocess
    import sys

    code = """
import os, threading, time
import jax
from npgjax.rl import get_config, make_trainer
trainer = make_trainer(get_config("Pendulum-v1", num_envs=2, num_steps=8))
init = jax.jit(jax.vmap(trainer.init))
# Compile first: under a loaded machine compiling alone took over the watchdog's 20 s
# (a hang there still fails, by the subprocess timeout).
jax.block_until_ready(init(jax.random.split(jax.random.PRNGKey(150), 8)))
last = [time.time()]
def watchdog():
    while True:
        time.sleep(0.5)
        if time.time() - last[0] > 20:
            print("hang", flush=True)
            os._exit(3)
threading.Thread(target=watchdog, daemon=True).start()
for i in range(150):
    jax.block_until_ready(init(jax.random.split(jax.random.PRNGKey(i), 8)))
    last[0] = time.time()
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", (out.stdout, out.stderr)
