"""The ``python -m npgjax.train`` command line: outputs, resume equivalence, errors."""

from __future__ import annotations

import csv
import json
import pickle

import pytest

pytest.importorskip("matplotlib")

from npgjax.train import choose_chunk_updates, main, parse_set

# 8 updates of 2 x 32 steps per seed; the compiled chunk is shared by all runs below
# (same config, seeds and chunk size), so the module compiles once.
TINY = [
    "--env", "CartPole-v1", "--algo", "npg", "--seeds", "2",
    "--total-timesteps", "512", "--set", "num_envs=2", "--set", "num_steps=32",
    "--set", "vf_minibatch=0", "--chunk-updates", "2", "--no-progress",
    "--no-compile-cache",
]
SEEDS, UPDATES = 2, 8


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A full run, and the same run stopped after two chunks and then resumed."""
    root = tmp_path_factory.mktemp("train_cli")
    full, split = root / "full", root / "split"
    assert main([*TINY, "--out", str(full)]) == 0
    assert main([*TINY, "--out", str(split), "--stop-after-chunks", "2", "--no-plot"]) == 0
    stopped = pickle.loads((split / "checkpoint.pkl").read_bytes())
    assert main([*TINY, "--out", str(split), "--resume", "--no-plot"]) == 0
    return full, split, stopped


def test_outputs(runs):
    full, _, _ = runs
    for name in ("metrics.csv", "summary.json", "checkpoint.pkl", "learning_curve.png",
                 "diagnostics.png"):
        assert (full / name).stat().st_size > 0, name
    with open(full / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == SEEDS * UPDATES
    cols = list(rows[0])
    assert cols[:3] == ["seed", "update", "env_steps"]
    for key in ("train_return", "eval_return", "kl", "predicted_kl", "entropy", "value_loss",
                "explained_variance", "cg_residual", "ls_tries"):
        assert key in cols
    assert [(r["seed"], r["update"]) for r in rows] == [
        (str(s), str(u)) for s in range(SEEDS) for u in range(1, UPDATES + 1)
    ]
    assert rows[-1]["env_steps"] == "512"

    summary = json.loads((full / "summary.json").read_text())
    assert summary["complete"] and summary["env_steps_per_seed"] == 512
    assert summary["config"]["num_envs"] == 2 and summary["config"]["hidden"] == [64, 64]
    assert len(summary["final_return"]["per_seed"]) == SEEDS
    assert summary["compile_time_s"] >= 0 and summary["env_steps_per_s"] > 0
    assert summary["device"]["platform"]

    ckpt = pickle.loads((full / "checkpoint.pkl").read_bytes())
    assert ckpt["chunks_done"] == UPDATES // 2 and ckpt["chunk_updates"] == 2
    assert ckpt["metrics"]["train_return"].shape == (SEEDS, UPDATES)


def test_resume_gives_identical_metrics(runs):
    full, split, stopped = runs
    assert stopped["chunks_done"] == 2
    assert stopped["metrics"]["train_return"].shape == (SEEDS, 4)
    assert (split / "metrics.csv").read_text() == (full / "metrics.csv").read_text()


def test_resume_refuses_other_config(runs, capsys):
    _, split, _ = runs
    with pytest.raises(SystemExit) as e:
        main([*TINY, "--out", str(split), "--resume", "--set", "max_kl=0.02"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "max_kl" in err


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--env", "NoSuchEnv-v0"], "NoSuchEnv-v0"),
        (["--algo", "sarsa"], "sarsa"),
        (["--set", "not_a_field=1"], "not_a_field"),
        (["--set", "max_kl=-1"], "max_kl"),
        (["--set", "max_kl=abc"], "max_kl"),
        (["--set", "hidden"], "key=value"),
        (["--seeds", "0"], "--seeds"),
    ],
)
def test_bad_arguments_exit_2(args, expected, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main([*args, "--out", str(tmp_path / "out"), "--no-progress", "--no-compile-cache"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert expected in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_resume_without_checkpoint(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main([*TINY, "--out", str(tmp_path), "--resume"])
    assert e.value.code == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_parse_set_and_chunks():
    assert parse_set(["max_kl=1", "hidden=32", "normalize_obs=False", "activation=relu",
                      "total_timesteps=1e5"]) == {
        "max_kl": 1.0, "hidden": (32,), "normalize_obs": False, "activation": "relu",
        "total_timesteps": 100_000,
    }
    assert choose_chunk_updates(98) == 7  # nearest divisor to 98 / 20
    assert choose_chunk_updates(98, 10) == 7  # largest divisor <= 10
    assert choose_chunk_updates(8, 100) == 8
    assert choose_chunk_updates(97, 10) == 1


def test_warm_start_reads_the_exported_chunk(tmp_path):
    """A second process with the same cache skips tracing the chunk, with equal results."""
    import os
    import subprocess
    import sys

    args = [a for a in TINY if a != "--no-compile-cache"] + ["--no-plot"]
    env = dict(os.environ, NPGJAX_CACHE_DIR=str(tmp_path / "cache"))
    summaries = []
    for name in ("first", "second"):
        out = tmp_path / name
        proc = subprocess.run([sys.executable, "-m", "npgjax.train", *args, "--out", str(out)],
                              capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr
        summaries.append(json.loads((out / "summary.json").read_text()))
        with open(out / "metrics.csv", newline="") as f:
            summaries[-1]["rows"] = list(csv.DictReader(f))
    assert [s["sessions"][0]["export"] for s in summaries] == ["saved", "loaded"]
    assert list((tmp_path / "cache" / "npgjax-export").glob("*.jaxexport"))
    assert summaries[0]["rows"] == summaries[1]["rows"]


def test_corrupt_exported_chunk_is_replaced(tmp_path):
    import jax
    import jax.numpy as jnp

    from npgjax.cli.compile import _exported_chunk

    path = tmp_path / "x.jaxexport"
    path.write_bytes(b"not an export")
    leaves = [jax.ShapeDtypeStruct((3,), jnp.float32)]
    exp, how = _exported_chunk(lambda x: (x * 2,), leaves, path)
    assert how == "saved" and path.read_bytes() != b"not an export"
    exp2, how2 = _exported_chunk(lambda x: (x * 2,), leaves, path)
    assert how2 == "loaded"
    assert float(exp2.call(jnp.ones(3))[0][1]) == 2.0
