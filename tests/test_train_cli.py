"""The ``python -m npgjax.train`` command line: outputs, resume equivalence, errors."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys

import numpy as np
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
    stopped = json.loads((split / "checkpoint.json").read_text())
    assert main([*TINY, "--out", str(split), "--resume", "--no-plot"]) == 0
    return full, split, stopped


def _checkpoint(run_dir):
    """The run's checkpoint, its state restored into the structure of a fresh init."""
    import jax

    from npgjax.cli.io import load_checkpoint
    from npgjax.rl import get_config, make_trainer

    trainer = make_trainer(get_config("CartPole-v1", num_envs=2, num_steps=32,
                                      vf_minibatch=0, total_timesteps=512))
    keys = jax.random.split(jax.random.PRNGKey(0), SEEDS)
    return load_checkpoint(run_dir, jax.eval_shape(jax.vmap(trainer.init), keys))


def test_outputs(runs):
    full, _, _ = runs
    for name in ("metrics.csv", "summary.json", "checkpoint.json", "checkpoint.msgpack",
                 "learning_curve.png", "diagnostics.png"):
        assert (full / name).stat().st_size > 0, name
    assert not list(full.glob("*.pkl")) and not (full / ".npgjax.lock").exists()
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

    import npgjax

    ckpt = _checkpoint(full)
    assert ckpt["format_version"] == 2 and ckpt["npgjax_version"] == npgjax.__version__
    assert ckpt["chunks_done"] == UPDATES // 2 and ckpt["chunk_updates"] == 2
    assert (ckpt["seeds"], ckpt["seed"]) == (SEEDS, 0)
    assert ckpt["config"]["env"] == "CartPole-v1" and ckpt["config"]["num_steps"] == 32
    assert ckpt["metrics"]["train_return"].shape == (SEEDS, UPDATES)
    assert ckpt["state"].update.shape == (SEEDS,) and (ckpt["state"].update == UPDATES).all()
    with open(full / "metrics.csv", newline="") as f:
        last = [r for r in csv.DictReader(f) if r["update"] == str(UPDATES)]
    assert [float(r["train_return"]) for r in last] == pytest.approx(
        ckpt["metrics"]["train_return"][:, -1].tolist())


def test_resume_gives_identical_metrics(runs):
    full, split, stopped = runs
    assert stopped["chunks_done"] == 2 and len(stopped["sessions"]) == 1
    assert (split / "metrics.csv").read_text() == (full / "metrics.csv").read_text()
    a, b = _checkpoint(full)["state"], _checkpoint(split)["state"]
    import jax

    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b),
                                                    strict=True))


def test_quick_compile_trains_alike_and_is_recorded(runs, tmp_path):
    full, _, _ = runs
    out = tmp_path / "quick"
    assert main([*TINY, "--out", str(out), "--no-plot", "--quick-compile"]) == 0
    quick, plain = (json.loads((d / "summary.json").read_text()) for d in (out, full))
    assert [s["quick_compile"] for s in quick["sessions"]] == [True]
    assert [s["quick_compile"] for s in plain["sessions"]] == [False]
    with open(out / "metrics.csv", newline="") as f, open(full / "metrics.csv", newline="") as g:
        rows_q, rows_p = list(csv.DictReader(f)), list(csv.DictReader(g))
    assert len(rows_q) == len(rows_p) == SEEDS * UPDATES
    for name in ("kl", "value_loss", "train_return"):  # other kernels: rounding at most
        np.testing.assert_allclose([float(r[name]) for r in rows_q],
                                   [float(r[name]) for r in rows_p], rtol=1e-3, atol=1e-5)


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
    """A second process with the same cache reads both programs before building the
    trainer (npgjax/cli/warm.py), a third without that manifest skips lowering them, all
    with equal results; a fourth with ``--no-compile-cache`` uses no cache at all."""
    import os
    import subprocess
    import sys

    args = [a for a in TINY if a != "--no-compile-cache"] + ["--no-plot"]
    env = dict(os.environ, NPGJAX_CACHE_DIR=str(tmp_path / "cache"))
    summaries = []
    export_dir = tmp_path / "cache" / "npgjax-export"
    for name in ("first", "second", "third"):
        if name == "third":  # without the warm-start manifest: the export by the config
            for manifest in export_dir.glob("*.warm.json"):
                manifest.unlink()
        out = tmp_path / name
        proc = subprocess.run([sys.executable, "-m", "npgjax.train", *args, "--out", str(out)],
                              capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr
        summaries.append(json.loads((out / "summary.json").read_text()))
        with open(out / "metrics.csv", newline="") as f:
            summaries[-1]["rows"] = list(csv.DictReader(f))
    assert [s["sessions"][0]["export"] for s in summaries] == ["saved", "warm", "loaded"]
    saved = sorted(p.name for p in export_dir.glob("*.jaxexport"))
    assert len(saved) == 2 and saved[0] == saved[1].replace(".jaxexport", "-init.jaxexport")
    assert len(list(export_dir.glob("*.warm.json"))) == 1  # written again by the third
    assert summaries[0]["rows"] == summaries[1]["rows"] == summaries[2]["rows"]
    # JAX's own entries of these programs sit beside the exports ...
    assert [p for p in (tmp_path / "cache").iterdir() if p.name != "npgjax-export"]
    # ... and --no-compile-cache writes none and reads none, also not to or from a cache
    # that JAX_COMPILATION_CACHE_DIR names (which the test session sets for subprocesses).
    jax_cache = tmp_path / "jax-cache"
    env.update(JAX_COMPILATION_CACHE_DIR=str(jax_cache),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    out = tmp_path / "uncached"
    proc = subprocess.run([sys.executable, "-m", "npgjax.train", *args, "--no-compile-cache",
                           "--out", str(out)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "summary.json").read_text())["sessions"][0]["export"] == "traced"
    assert not jax_cache.exists() or not any(jax_cache.iterdir())
    with open(out / "metrics.csv", newline="") as f:
        assert list(csv.DictReader(f)) == summaries[0]["rows"]


def test_corrupt_exported_chunk_is_replaced(tmp_path):
    import jax
    import jax.numpy as jnp

    from npgjax.cli.compile import _exported

    path = tmp_path / "x.jaxexport"
    path.write_bytes(b"not an export")
    leaves = [jax.ShapeDtypeStruct((3,), jnp.float32)]
    exp, how = _exported(jax.jit(lambda x: (x * 2,)), leaves, path)
    assert how == "saved" and path.read_bytes() != b"not an export"
    exp2, how2 = _exported(jax.jit(lambda x: (x * 2,)), leaves, path)
    assert how2 == "loaded"
    assert float(exp2.call(jnp.ones(3))[0][1]) == 2.0


def _resume_error(run_dir, capsys):
    """Resume ``run_dir``; the one-line error of the exit status 2."""
    with pytest.raises(SystemExit) as e:
        main([*TINY, "--out", str(run_dir), "--resume", "--no-plot"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def _copy(run, tmp_path):
    return shutil.copytree(run, tmp_path / "run")


def _rewrite_state(run_dir, edit):
    """Apply ``edit`` to the saved state dict; rewrite the file and its recorded hash."""
    from flax import serialization

    tree = serialization.msgpack_restore((run_dir / "checkpoint.msgpack").read_bytes())
    edit(tree["state"])
    data = serialization.msgpack_serialize(tree)
    (run_dir / "checkpoint.msgpack").write_bytes(data)
    meta = json.loads((run_dir / "checkpoint.json").read_text())
    meta["state_sha256"] = hashlib.sha256(data).hexdigest()
    (run_dir / "checkpoint.json").write_text(json.dumps(meta))


def test_resume_of_a_finished_run_is_a_no_op(runs, tmp_path):
    run = _copy(runs[0], tmp_path)
    before = (run / "metrics.csv").read_text()
    assert main([*TINY, "--out", str(run), "--resume", "--no-plot"]) == 0
    assert (run / "metrics.csv").read_text() == before


def test_old_pickle_checkpoint_is_refused_without_unpickling(tmp_path, capsys, monkeypatch):
    """A version-1 run directory (``checkpoint.pkl``) is refused clearly, never loaded."""
    old = tmp_path / "old"
    old.mkdir()
    (old / "checkpoint.pkl").write_bytes(pickle.dumps({"version": 1, "state": [1, 2]}))

    def refuse(*a, **k):
        raise AssertionError("a checkpoint was unpickled")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    err = _resume_error(old, capsys)
    assert "format version 1" in err and "pickle" in err and "rerun" in err

    from npgjax.rl import load_policy

    with pytest.raises(ValueError, match="format version 1"):
        load_policy(old)
    # A pickle under the new name is refused by its header, also without unpickling.
    (old / "checkpoint.msgpack").write_bytes(pickle.dumps({"version": 1}))
    (old / "checkpoint.json").write_text(json.dumps({
        "format": "npgjax-checkpoint", "format_version": 2, "seeds": 1,
        "state_sha256": hashlib.sha256((old / "checkpoint.msgpack").read_bytes()).hexdigest()}))
    with pytest.raises(ValueError, match="is a pickle"):
        load_policy(old)
    # A fresh run in that folder replaces the old run: no pickle is left behind.
    assert main([*TINY, "--out", str(old), "--no-plot"]) == 0
    assert not list(old.glob("*.pkl")) and (old / "checkpoint.json").exists()


def test_future_format_version_is_refused(runs, tmp_path, capsys):
    run = _copy(runs[0], tmp_path)
    meta = json.loads((run / "checkpoint.json").read_text())
    meta["format_version"] = 3
    (run / "checkpoint.json").write_text(json.dumps(meta))
    err = _resume_error(run, capsys)
    assert "format version 3" in err and "upgrade npgjax" in err


@pytest.mark.parametrize("damage", ["truncated", "garbage", "json"])
def test_corrupt_checkpoint_is_refused(runs, tmp_path, capsys, damage):
    run = _copy(runs[0], tmp_path)
    state = run / "checkpoint.msgpack"
    if damage == "truncated":
        state.write_bytes(state.read_bytes()[:1000])
    elif damage == "garbage":  # with a matching hash: the msgpack decoder fails
        data = b"\xc1" * 64
        state.write_bytes(data)
        meta = json.loads((run / "checkpoint.json").read_text())
        meta["state_sha256"] = hashlib.sha256(data).hexdigest()
        (run / "checkpoint.json").write_text(json.dumps(meta))
    else:
        (run / "checkpoint.json").write_text('{"format": "npgjax-checkpoint", ')
    assert "corrupt" in _resume_error(run, capsys)


def test_missing_key_and_wrong_shape_are_refused(runs, tmp_path, capsys):
    run = _copy(runs[0], tmp_path)
    _rewrite_state(run, lambda s: s["obs_stats"].pop("var"))
    err = _resume_error(run, capsys)
    assert "missing key(s) ['var']" in err and "obs_stats" in err

    shutil.rmtree(run)
    run = _copy(runs[0], tmp_path)

    def reshape(s):
        s["obs_stats"]["mean"] = np.zeros((SEEDS, 5), np.float32)

    _rewrite_state(run, reshape)
    err = _resume_error(run, capsys)
    assert "obs_stats/mean" in err and "float32[2, 5]" in err and "float32[2, 4]" in err


def test_lock_refuses_a_second_writer_and_takes_over_a_stale_one(runs, tmp_path, capsys):
    run = _copy(runs[0], tmp_path)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (run / ".npgjax.lock").write_text(f"{other.pid} {os.uname().nodename}\n")
        err = _resume_error(run, capsys)
        assert f"in use by another npgjax-train (pid {other.pid})" in err
    finally:
        other.kill()
        other.wait()
    # The owner is gone: its lock is stale and taken over, then released.
    assert main([*TINY, "--out", str(run), "--resume", "--no-plot"]) == 0
    assert not (run / ".npgjax.lock").exists()


def test_out_that_is_a_file_or_unwritable(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    cases = [(afile, "is a file, not a directory"),
             (afile / "sub", f"{afile} is a file")]
    if os.path.isdir("/sys/kernel"):  # sysfs: no new directories, even for root
        cases.append(("/sys/kernel/npgjax-test-out", "cannot create the directory"))
    for out, expected in cases:
        with pytest.raises(SystemExit) as e:
            main([*TINY, "--out", str(out), "--no-plot"])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert expected in err and "Traceback" not in err
        assert err.strip().splitlines()[-1].startswith("npgjax-train: error: --out")


def test_tensorboard_without_tensorboardx_is_a_clear_error(tmp_path, capsys, monkeypatch):
    from npgjax.cli import io

    monkeypatch.setattr(io, "tensorboard_available", lambda: False)
    with pytest.raises(SystemExit) as e:
        main([*TINY, "--out", str(tmp_path / "tb"), "--tensorboard"])
    assert e.value.code == 2
    assert "pip install 'npgjax[tensorboard]'" in capsys.readouterr().err


def _events(logdir):
    """``{tag: [(step, value), ...]}`` of the tfevents files (the TFRecord framing)."""
    import struct

    from tensorboardX.proto import event_pb2

    out = {}
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        data, i = path.read_bytes(), 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i:i + 8])
            event = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
            i += 12 + n + 4
            for v in event.summary.value:
                out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out


def test_tensorboard_writes_every_metric_per_update_and_seed(runs, tmp_path):
    pytest.importorskip("tensorboardX")
    out = tmp_path / "tb"
    assert main([*TINY, "--out", str(out), "--no-plot", "--tensorboard"]) == 0
    events = _events(out / "tensorboard")
    with open(runs[0] / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for s in range(SEEDS):
        for key in ("train_return", "kl", "entropy", "env_steps"):
            want = [(int(r["update"]), float(r[key])) for r in rows if r["seed"] == str(s)
                    and np.isfinite(float(r[key]))]
            got = events[f"seed{s}/{key}"]
            assert [u for u, _ in got] == [u for u, _ in want]
            assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6)
        # eval_return only where training evaluated (after update 8 here: eval_every 10)
        assert [u for u, _ in events[f"seed{s}/eval_return"]] == [UPDATES]


def test_stale_exported_chunk_is_exported_again(tmp_path):
    """An export at the path whose inputs do not match the state is replaced, not run."""
    import jax
    import numpy as np

    from npgjax.cli import compile as comp
    from npgjax.rl import get_config, make_trainer

    def trainer(hidden):
        return make_trainer(get_config("CartPole-v1", "npg", num_envs=2, num_steps=8,
                                       hidden=hidden, total_timesteps=32))

    keys = jax.random.PRNGKey(0)[None]
    small, big = trainer((8,)), trainer((16,))
    comp.compile_training(small, keys, 2, str(tmp_path))
    path = comp._export_path(str(tmp_path), big.config, keys, 2, vmapped=False)
    stale = path.parent / "stale"
    (old,) = [p for p in path.parent.glob("*.jaxexport") if not p.stem.endswith("-init")]
    old.rename(stale)
    stale.rename(path)  # the small network's chunk where the big one's belongs
    init, run_chunk, *_ = comp.compile_training(big, keys, 2, str(tmp_path))
    assert run_chunk.export == "saved"
    state, metrics = run_chunk(init(keys), 0)
    assert np.asarray(metrics["train_return"]).shape == (1, 2)  # ran: one seed, 2 updates
    shapes = [a.shape for a in comp._read_export(path).in_avals]
    assert (1, 16) in shapes and (1, 8) not in shapes  # the big network's export now


def test_one_seed_chunk_runs_without_vmap_and_agrees(tmp_path):
    """One seed's chunk runs without vmap's size-1 axis (not with the quick compile):
    the same inputs and outputs, the same training up to rounding, its own export."""
    import jax
    import numpy as np

    from npgjax.cli import compile as comp
    from npgjax.rl import compiler_options, get_config, make_trainer

    one, two = jax.random.PRNGKey(3)[None], jax.random.split(jax.random.PRNGKey(3), 2)
    assert not comp._vmapped(one, compiler_options("cpu"))
    assert comp._vmapped(one, compiler_options("cpu", quick=True))
    assert comp._vmapped(two, compiler_options("cpu"))
    trainer = make_trainer(get_config("CartPole-v1", "npg", num_envs=2, num_steps=16,
                                      total_timesteps=96))
    with pytest.raises(ValueError, match="one seed"):
        comp._flat_programs(trainer, two, 2, vmapped=False)
    runs = {}
    for vmapped in (True, False):
        init, chunk, _ = comp._flat_programs(trainer, one, 3, vmapped=vmapped)
        flat = jax.jit(init)(one)
        runs[vmapped] = jax.jit(chunk)(np.int32(0), *flat)
    (s_v, m_v), (s_u, m_u) = runs[True], runs[False]
    assert [x.shape for x in s_u] == [x.shape for x in s_v]
    assert jax.tree.map(np.shape, m_u) == jax.tree.map(np.shape, m_v)
    assert m_u["train_return"].shape == (1, 3)
    for a, b in zip(s_u, s_v, strict=True):
        np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64),
                                   rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(m_u["kl"], m_v["kl"], rtol=1e-2, atol=1e-6)
    assert float(np.max(m_u["kl"])) > 0  # it trained
    # The plain and the quick compile export different programs, side by side.
    for quick in (False, True):
        comp.compile_training(trainer, one, 3, str(tmp_path), quick_compile=quick)
    paths = [comp._export_path(str(tmp_path), trainer.config, one, 3, vmapped=v)
             for v in (False, True)]
    assert paths[0] != paths[1] and all(p.exists() for p in paths)
    shapes = {v: [a.shape for a in comp._read_export(p).in_avals]
              for v, p in zip((False, True), paths, strict=True)}
    assert shapes[False] == shapes[True]  # both take the state with its seed axis
