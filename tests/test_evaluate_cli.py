"""Done-when of issue 9: a policy trained by the CLI with the defaults, loaded with
load_policy, evaluated over 100 episodes; and the ``python -m npgjax.evaluate`` command.

One run of ``npgjax-train --env CartPole-v1 --seeds 4`` (the defaults otherwise:
100,352 steps per seed, about a minute on 2 CPU cores) is shared by every test here.
"""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("matplotlib")

from npgjax.evaluate import main as evaluate_main
from npgjax.rl import evaluate_policy, load_policy
from npgjax.train import main as train_main

SEEDS, SOLVED = 4, 475.0


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("evaluate") / "cartpole"
    assert train_main(["--env", "CartPole-v1", "--seeds", str(SEEDS), "--out", str(out),
                       "--no-plot", "--no-progress", "--no-compile-cache"]) == 0
    return out, json.loads((out / "summary.json").read_text())


def test_loaded_policy_scores_its_training_result(run):
    """Every seed whose final training evaluation reached 475 scores at least 475 over
    100 deterministic episodes once loaded; and with the trainer's own evaluation key,
    the loaded policy reproduces the training's last eval_return exactly."""
    out, summary = run
    final = summary["final_eval_return"]["per_seed"]
    assert summary["config"]["total_timesteps"] == 100_000 and len(final) == SEEDS
    from npgjax.cli.io import load_checkpoint
    from npgjax.rl import make_trainer

    policies = load_policy(out, list(range(SEEDS)))
    trainer = make_trainer(policies.config)
    keys = jax.random.split(jax.random.PRNGKey(0), SEEDS)
    state = load_checkpoint(out, jax.eval_shape(jax.vmap(trainer.init), keys))["state"]
    eval_keys = jax.vmap(lambda k: jax.random.fold_in(k, 0x5EED))(state.key)
    run_eval = jax.jit(jax.vmap(lambda p, k, n: evaluate_policy(p, k, n)[0],
                                in_axes=(0, 0, None)), static_argnums=2)
    again = run_eval(policies, eval_keys, trainer.config.eval_episodes).mean(axis=1)
    np.testing.assert_array_equal(np.asarray(again, np.float32), np.float32(final))

    scores = run_eval(policies, jax.random.split(jax.random.PRNGKey(7), SEEDS), 100)
    means = np.asarray(scores.mean(axis=1))
    print(f"training eval_return per seed {final}; loaded, 100 episodes: {means.tolist()}")
    assert any(f >= SOLVED for f in final), "no seed solved CartPole: nothing to check"
    for s in range(SEEDS):
        if final[s] >= SOLVED:
            assert means[s] >= SOLVED, (s, means[s])


def test_evaluate_command(run, tmp_path, capsys):
    out, summary = run
    gif, js = tmp_path / "episode.gif", tmp_path / "eval.json"
    assert evaluate_main([str(out), "--episodes", "20", "--render", str(gif),
                          "--max-steps", "30", "--out", str(js)]) == 0
    text = capsys.readouterr().out
    result = json.loads(js.read_text())
    assert [r["seed"] for r in result["per_seed"]] == list(range(SEEDS))
    assert result["episodes"] == 20 and result["stochastic"] is False
    final = summary["final_eval_return"]["per_seed"]
    for r in result["per_seed"]:
        assert r["training_result"] == pytest.approx(final[r["seed"]])
        assert f"seed {r['seed']}: return {r['mean']:.1f} ± {r['std']:.1f}" in text
        assert r["max"] <= 30 and r["mean_length"] == r["mean"]  # CartPole: 1 per step
    assert result["mean"] == pytest.approx(np.mean([r["mean"] for r in result["per_seed"]]))
    from PIL import Image

    with Image.open(gif) as im:
        assert im.format == "GIF" and im.n_frames == result["render"]["frames"]
    assert 2 <= result["render"]["frames"] <= 30
    assert result["render"]["return"] == result["render"]["frames"]


def test_evaluate_stochastic_subset_of_seeds(run, capsys):
    out, _ = run
    assert evaluate_main([str(out), "--episodes", "5", "--seeds", "1", "3", "--stochastic",
                          "--max-steps", "50"]) == 0
    result = json.loads((out / "evaluation.json").read_text())
    assert [r["seed"] for r in result["per_seed"]] == [1, 3] and result["stochastic"]
    assert all(r["max"] <= 50 for r in result["per_seed"])


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["{missing}"], "no checkpoint"),
        (["{run}", "--seeds", "9"], "out of range"),
        (["{run}", "--episodes", "0"], "--episodes"),
        (["{run}", "--render", "x.mp4"], "must end in .gif"),
    ],
)
def test_evaluate_errors_are_one_line(run, tmp_path, capsys, args, expected):
    args = [a.format(missing=tmp_path / "nope", run=run[0]) for a in args]
    with pytest.raises(SystemExit) as e:
        evaluate_main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert expected in err and len(err.strip().splitlines()) == 1


def test_policy_in_a_users_jitted_loop(run):
    """The how-to pattern: act inside a user's own lax.scan over environment steps."""
    out, summary = run
    seed = int(np.argmax(summary["final_eval_return"]["per_seed"]))
    policy = load_policy(out, seed=seed)
    env, params = policy.env.env, policy.env.params

    @functools.partial(jax.jit, static_argnums=1)
    def falls(key, trained):
        obs, state = env.reset(key, params)

        def step(carry, k):
            obs, state = carry
            action = policy.act(obs) if trained else jnp.int32(0)
            obs, state, _, term, _, _ = env.step(k, state, action, params)
            return (obs, state), term

        return jnp.sum(jax.lax.scan(step, (obs, state), jax.random.split(key, 300))[1])

    assert int(falls(jax.random.PRNGKey(3), False)) > 5  # pushing left: falls every ~10 steps
    assert int(falls(jax.random.PRNGKey(3), True)) == 0  # the best seed balances 300 steps
