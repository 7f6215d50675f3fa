"""The open RL layer: any environment, networks, evaluation inside training, options."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from npgjax.rl import (
    SOLVED_RETURNS,
    compiler_options,
    default_target,
    get_config,
    make_env,
    make_networks,
    make_train,
    make_trainer,
    run_updates,
)


def test_env_object_kwargs_and_params():
    from gymnax.environments.bsuite.deep_sea import DeepSea

    cfg = get_config(DeepSea(size=6), "npg", env_params={"max_steps_in_episode": 6})
    assert cfg.env_name == "DeepSea-bsuite" and cfg.env_params == (("max_steps_in_episode", 6),)
    spec = make_env("DeepSea-bsuite", {"size": 6})
    assert spec.obs_shape == (6, 6)
    with pytest.raises(ValueError, match=r"unknown env kwarg.*'sise'.*size"):
        get_config("DeepSea-bsuite", env_kwargs={"sise": 16})
    with pytest.raises(ValueError, match=r"unknown env params field.*max_step.*valid"):
        get_config("CartPole-v1", env_params={"max_step": 3})
    with pytest.raises(ValueError, match="cannot build DeepSea-bsuite"):
        get_config("DeepSea-bsuite", env_kwargs={"size": "big"})


def test_options_belong_to_their_algorithm():
    with pytest.raises(ValueError, match=r"'max_kl' is not used by algo 'vpg'.*npg"):
        get_config("CartPole-v1", "vpg", max_kl=0.02)
    with pytest.raises(ValueError, match=r"'ls_shrink' is not used by algo 'npg'.*trpo"):
        get_config("CartPole-v1", "npg", ls_shrink=0.5)
    with pytest.raises(ValueError, match=r"'fisher' is not used by algo 'enac'"):
        get_config("CartPole-v1", "enac", fisher="empirical")
    cfg = get_config("CartPole-v1", "vpg")  # env defaults for npg's options are dropped
    assert cfg.traced == ("gamma", "gae_lambda", "vf_lr", "pi_lr")
    with pytest.raises(AttributeError, match="max_kl"):
        _ = cfg.max_kl
    trpo = get_config("CartPole-v1", "trpo")
    assert trpo.traced == ("gamma", "gae_lambda", "vf_lr", "max_kl", "damping")
    assert trpo.replace(ls_shrink=0.5, num_envs=4).ls_shrink == 0.5
    with pytest.raises(ValueError, match="pi_lr"):
        trpo.replace(pi_lr=0.1)


def test_evaluation_does_not_change_training():
    base = dict(total_timesteps=1536, num_envs=4, num_steps=64, vf_minibatch=0, vf_epochs=2)
    on = get_config("CartPole-v1", "trpo", eval_every=2, eval_episodes=3, **base)
    off = on.replace(eval_every=0)
    key = jax.random.PRNGKey(1)
    s_on, m_on = jax.jit(make_train(on))(key)
    s_off, m_off = jax.jit(make_train(off))(key)
    assert "eval_return" not in m_off
    # Evaluation keys are folded off the training stream, so training is the same run;
    # the two programs compile differently, so float rounding may differ slightly.
    for k in ("train_return", "episodes", "rollout_return", "kl", "entropy"):
        np.testing.assert_allclose(m_on[k], m_off[k], rtol=1e-3, atol=1e-6, err_msg=k)
    for a, b in zip(jax.tree.leaves(s_on.pi_params), jax.tree.leaves(s_off.pi_params),
                    strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)
    ev = np.asarray(m_on["eval_return"])
    assert np.all(np.isfinite(ev[1::2])) and np.all(np.isnan(ev[0::2][:-1]))
    # The final evaluation equals an evaluation of the final state run by hand.
    trainer = make_trainer(on)
    np.testing.assert_allclose(trainer.evaluate(s_on)["eval_return"], ev[-1], rtol=1e-6)


def test_chunks_with_evaluation_equal_one_run():
    cfg = get_config("CartPole-v1", "npg", total_timesteps=1024, num_envs=2, num_steps=64,
                     vf_minibatch=0, vf_epochs=2, eval_every=3, eval_episodes=2)
    trainer = make_trainer(cfg)
    # Programs that differ, bit for bit: compiled as the library compiles (the suite's
    # LLVM O0 rounds differently from one program to another; tests/conftest.py).
    opts = compiler_options()
    state0 = jax.jit(trainer.init, compiler_options=opts)(jax.random.PRNGKey(0))
    run = jax.jit(lambda s, start: run_updates(trainer, s, start, 4), compiler_options=opts)
    s, a = run(state0, 0)
    s, b = run(s, 4)
    _, whole = jax.jit(make_train(cfg), compiler_options=opts)(jax.random.PRNGKey(0))
    for k in whole:
        np.testing.assert_array_equal(np.concatenate([a[k], b[k]]), whole[k], err_msg=k)


def test_cnn_for_images_and_custom_torsos():
    pi, vf = make_networks("cnn", (10, 10, 4), 6)
    assert type(pi).__name__ == "CNN"
    assert type(make_networks("auto", (10, 10, 4), 6)[0]).__name__ == "MLP"  # measured
    with pytest.raises(ValueError, match=r"'cnn' needs image observations.*\(4,\)"):
        make_networks("cnn", (4,), 2)
    with pytest.raises(ValueError, match="policy network does not fit"):
        make_networks("mlp", (4,), 2, policy_torso=nn.Conv(4, (3, 3)))
    cfg = get_config("Breakout-MinAtar", "npg", total_timesteps=256, num_envs=4,
                     num_steps=32, network="cnn")
    _, m = jax.jit(make_train(cfg))(jax.random.PRNGKey(0))
    assert np.all(np.isfinite(np.asarray(m["kl"]))) and np.asarray(m["kl"]).max() > 0
    with pytest.raises(ValueError, match="unknown network"):
        get_config("CartPole-v1", network="transformer")


def test_default_targets():
    assert default_target("Catch-bsuite") == 1.0 and SOLVED_RETURNS["CartPole-v1"] == 475
    assert default_target("Breakout-MinAtar") is None


def test_complete_mean_waits_for_every_seed():
    from npgjax.cli.plots import complete_mean

    y = np.array([[np.nan, 79.0, 70.0], [np.nan, np.nan, -10.0]])
    mean, _ = complete_mean(y)
    assert np.isnan(mean[0]) and np.isnan(mean[1]) and mean[2] == pytest.approx(30.0)


def test_hparams_follow_the_declaration():
    cfg = get_config("CartPole-v1", "vpg", total_timesteps=256, num_envs=2, num_steps=64)
    trainer = make_trainer(cfg)
    state = trainer.init(jax.random.PRNGKey(0), {"pi_lr": jnp.float32(0.1)})
    assert set(state.hparams) == set(cfg.traced)
    with pytest.raises(ValueError, match="max_kl"):
        trainer.init(jax.random.PRNGKey(0), {"max_kl": 0.1})


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--env", "DeepSea-bsuite", "--env-kwargs", "sise=16"], "unknown env kwarg"),
        (["--env", "DeepSea-bsuite", "--env-kwargs", "size=big"], "cannot build"),
        (["--env-params", "max_step=3"], "unknown env params field"),
        (["--env-kwargs", "size"], "key=value"),
        (["--algo", "vpg", "--set", "max_kl=0.1"], "not used by algo 'vpg'"),
        (["--env", "CartPole-v1", "--set", "network=cnn"], "needs image observations"),
    ],
)
def test_cli_environment_errors_are_one_line(args, expected, tmp_path, capsys):
    from npgjax.train import main

    with pytest.raises(SystemExit) as e:
        main([*args, "--out", str(tmp_path / "out"), "--no-progress", "--no-compile-cache"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_cli_env_kwargs_and_params_reach_the_run(tmp_path, capsys):
    import json

    from npgjax.train import main

    out = tmp_path / "deepsea"
    code = main(["--env", "DeepSea-bsuite", "--env-kwargs", "size=4", "--env-params",
                 "max_steps_in_episode=4", "--seeds", "2", "--total-timesteps", "256",
                 "--set", "num_envs=2", "--set", "num_steps=32", "--set", "vf_minibatch=0",
                 "--no-progress", "--no-compile-cache", "--no-plot", "--out", str(out)])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["env_kwargs"] == {"size": 4}
    assert summary["config"]["env_params"] == {"max_steps_in_episode": 4}
    assert summary["target"] == 0.99 and summary["success_metric"] == "eval_return"
    assert len(summary["final_eval_return"]["per_seed"]) == 2
