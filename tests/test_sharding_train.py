"""Training over several devices (npgjax.rl.sharding, ``--devices``/``--shard``, many processes).

Every multi-device run is a subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count``
set before JAX starts, so this pytest process keeps its one device. One small config
throughout (CartPole-v1, 8 environments x 16 steps, 4 updates, 2 seeds).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from .conftest import once_per_session, pythonpath

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"num_envs": 8, "num_steps": 16, "total_timesteps": 512, "hidden": (16,),
            "vf_epochs": 1, "eval_every": 2, "eval_episodes": 4}
CLI = ["--env", "CartPole-v1", "--algo", "npg", "--seeds", "2", "--chunk-updates", "2",
       "--no-progress", "--no-compile-cache", "--no-plot",
       *[a for k, v in SETTINGS.items() for a in ("--set", f"{k}={v}")]]
# Counts and returns follow discrete trajectories: they must agree exactly.
EXACT = ("env_steps", "episodes", "train_return", "episode_length", "eval_return",
         "eval_length", "rollout_return", "cg_iterations", "ls_tries", "ls_accepted")
TIMEOUT = 600

LIB_SCRIPT = """
import json, sys
import jax, numpy as np
from npgjax.rl import get_config, make_train
from npgjax.rl.sharding import make_sharded_train

cfg = get_config("CartPole-v1", "npg", **json.loads(sys.argv[2]))
keys = jax.random.split(jax.random.PRNGKey(0), 2)
out = {f"ref/{k}": v for k, v in jax.jit(jax.vmap(make_train(cfg)))(keys)[1].items()}
specs = {}
for name, kw in {"envs": dict(devices=4, shard="envs"), "seeds": dict(devices=2, shard="seeds"),
                 "both": dict(devices=4, shard="both"), "tasks": dict(devices=2, shard="tasks")
                 }.items():
    train = jax.jit(make_sharded_train(cfg, seeds=2, **kw))
    state, m = train(keys)
    again = train(keys)[1]
    out.update({f"{name}/{k}": v for k, v in m.items()})
    out.update({f"{name}_again/{k}": v for k, v in again.items()})
    specs[name] = [str(state.obs.sharding.spec), len(state.obs.sharding.device_set)]
np.savez(sys.argv[1], **{k: np.asarray(v) for k, v in out.items()})
print(json.dumps(specs))
"""


def _env(devices: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NPGJAX_")}
    flags = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
    env.update(XLA_FLAGS=flags.strip(), JAX_PLATFORMS="cpu", PYTHONPATH=pythonpath())
    return env


def _run(args: list[str], devices: int, env_extra: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], env={**_env(devices), **(env_extra or {})},
                          cwd=ROOT, text=True, capture_output=True, timeout=TIMEOUT)


def _csv(path: Path) -> dict[str, np.ndarray]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {k: np.array([float(r[k]) for r in rows]).reshape(2, -1) for k in rows[0]}


def _close(name: str, a: np.ndarray, b: np.ndarray) -> None:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if name in EXACT:
        np.testing.assert_array_equal(a, b, err_msg=name)
    else:  # sums in another order: float tolerance (cg_residual is ~1e-7 itself)
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6, err_msg=name)


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    """One device, and envs / seeds / both / tasks sharded, run twice each, on 4 host
    devices (once per session: see ``once_per_session``)."""

    def build(root: Path) -> None:
        proc = _run(["-c", LIB_SCRIPT, str(root / "metrics.npz"), json.dumps(SETTINGS)], 4)
        assert proc.returncode == 0, proc.stderr[-3000:]
        (root / "specs.json").write_text(proc.stdout.strip().splitlines()[-1])

    root = once_per_session(tmp_path_factory, "sharding-lib", build)
    data = np.load(root / "metrics.npz")
    runs: dict[str, dict[str, np.ndarray]] = {}
    for key in data.files:
        run, metric = key.split("/")
        runs.setdefault(run, {})[metric] = data[key]
    return runs, json.loads((root / "specs.json").read_text())


@pytest.fixture(scope="module")
def cli_4(tmp_path_factory):
    """The command line on 4 devices, environments sharded; and the same run stopped
    after one chunk and resumed (JAX's compilation cache in a temporary directory, so
    the later processes skip XLA). Once per session; the tests only read it."""

    def build(root: Path) -> None:
        argv = ["-m", "npgjax.train", *[a for a in CLI if a != "--no-compile-cache"],
                "--devices", "4", "--shard", "envs"]
        env = {"NPGJAX_CACHE_DIR": str(root / "cache")}
        split = str(root / "split")
        procs = [_run([*argv, "--out", str(root / "full")], 4, env_extra=env)]
        procs.append(_run([*argv, "--out", split, "--stop-after-chunks", "1"], 4,
                          env_extra=env))
        procs.append(_run([*argv, "--out", split, "--resume"], 4, env_extra=env))
        for proc in procs:
            assert proc.returncode == 0, proc.stderr[-3000:]
        (root / "stdout.txt").write_text(procs[0].stdout)

    root = once_per_session(tmp_path_factory, "sharding-cli4", build)
    return root / "full", (root / "stdout.txt").read_text(), root / "split"


@pytest.mark.parametrize("mode", ["envs", "seeds", "both", "tasks"])
def test_sharded_equals_one_device(lib, mode):
    runs, specs = lib
    ref, got = runs["ref"], runs[mode]
    assert set(got) == set(ref) and ref["kl"].shape == (2, 4)
    for name in ref:
        _close(name, ref[name], got[name])
    assert np.all(np.isfinite(got["kl"])) and np.all(got["episodes"][:, -1] > 0)
    # The state really is split: the observations' axes over the mesh.
    expect = {"envs": ["P(None, 'envs')", 4],
              "seeds": ["P('seeds',)", 2],
              "both": ["P('seeds', 'envs')", 4],
              "tasks": ["P()", 2]}[mode]  # replicated: each device runs one half
    assert specs[mode] == expect


@pytest.mark.parametrize("mode", ["envs", "seeds", "both", "tasks"])
def test_sharded_deterministic(lib, mode):
    runs, _ = lib
    for name, value in runs[mode].items():
        np.testing.assert_array_equal(value, runs[f"{mode}_again"][name], err_msg=name)


def test_cli_devices(lib, cli_4):
    out, stdout, _ = cli_4
    summary = json.loads((out / "summary.json").read_text())
    assert summary["device"]["devices_used"] == 4 and summary["device"]["shard"] == "envs"
    assert "x 4, envs sharded, 1 process" in stdout
    metrics, ref = _csv(out / "metrics.csv"), lib[0]["ref"]
    as_csv = np.vectorize(lambda v: float(format(v, ".9g")))  # metrics.csv's rounding
    for name in ref:
        _close(name, as_csv(np.asarray(ref[name], np.float64)), metrics[name])


def test_cli_resume_sharded(cli_4):
    """Stopped after one chunk and resumed on 4 devices: the same run, bit for bit; the
    later processes read the programs the first one exported."""
    full, _, split = cli_4
    assert (split / "metrics.csv").read_text() == (full / "metrics.csv").read_text()
    summary = json.loads((split / "summary.json").read_text())
    assert summary["complete"] and len(summary["sessions"]) == 2
    first = json.loads((full / "summary.json").read_text())["sessions"][0]["export"]
    assert [first] + [s["export"] for s in summary["sessions"]] == ["saved", "loaded", "loaded"]


ERRORS_SCRIPT = """
import contextlib, io, json, sys
from npgjax.train import main
out = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
    out.append([code, err.getvalue().strip().splitlines()[-1]])
print(json.dumps(out))
"""


def test_cli_errors(tmp_path):
    base = [*CLI, "--out", str(tmp_path / "run")]
    cases = [
        ([*base, "--devices", "8"], "--devices 8: only 4 devices (cpu) exist here"),
        ([*base, "--devices", "4", "--shard", "seeds"],
         "--shard seeds: seeds=2 does not divide over 4 devices"),
        ([*[a if a != "num_envs=8" else "num_envs=6" for a in base], "--devices", "4",
          "--shard", "envs"], "--shard envs: num_envs=6 does not divide over 4 devices"),
    ]
    proc = _run(["-c", ERRORS_SCRIPT, json.dumps([c[0] for c in cases])], 4)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for (_, message), (code, line) in zip(cases, results, strict=True):
        assert code == 2 and line.startswith("npgjax-train: error: " + message), line
    assert not (tmp_path / "run").exists()


def test_cli_errors_one_device(tmp_path):
    """In this process (one device): more devices than exist, a half-given multi-host."""
    import jax

    from npgjax.train import main

    only = f"--devices 2: only 1 device ({jax.default_backend()}) exist"
    # --shard tasks cannot make 2 host devices once JAX has started (as here).
    for extra, message in ((["--devices", "2"], only), (["--shard", "tasks"], only),
                           (["--num-processes", "2"], "several processes need")):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exc:
            main([*CLI, "--out", str(tmp_path / "run"), *extra])
        assert exc.value.code == 2 and message in err.getvalue()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(out: Path, cache: Path) -> list[tuple[int, str, str]]:
    """The command line as 2 processes x 2 CPU devices: (status, stdout, stderr) each."""
    port = _free_port()
    argv = [sys.executable, "-m", "npgjax.train", *[a for a in CLI if a != "--no-compile-cache"],
            "--shard", "envs", "--out", str(out)]
    procs = []
    for rank in (1, 0):
        env = {**_env(2), "NPGJAX_COORDINATOR": f"127.0.0.1:{port}", "NPGJAX_NUM_PROCESSES": "2",
               "NPGJAX_PROCESS_ID": str(rank), "NPGJAX_CACHE_DIR": str(cache)}
        procs.append(subprocess.Popen(argv, env=env, cwd=ROOT, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    try:
        results = [(p.wait(TIMEOUT), *p.communicate()) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    text = "\n".join(r[2][-2000:] for r in results)
    if any("gloo" in r[2].lower() and "not" in r[2].lower() and r[0] for r in results):
        pytest.skip(f"no gloo CPU collectives in this jaxlib: {text}")
    assert [r[0] for r in results] == [0, 0], text
    return results


def test_two_processes(cli_4, tmp_path):
    """2 processes x 2 CPU devices (gloo) == 1 process x 4 devices, same global batch; a
    second pair reads the programs the first exported, with the same results."""
    out = tmp_path / "mp"
    results = _two_processes(out, tmp_path / "cache")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["device"]["processes"] == 2 and summary["device"]["devices_used"] == 4
    # Process 1 prints nothing of its own (gloo may log its connections); process 0 all.
    assert "npgjax-train" not in results[0][1] and "env steps" not in results[0][1]
    assert "x 4, envs sharded, 2 processes" in results[1][1] and "outputs" in results[1][1]
    one, two = _csv(cli_4[0] / "metrics.csv"), _csv(out / "metrics.csv")
    for name in one:
        _close(name, one[name], two[name])
    _two_processes(tmp_path / "warm", tmp_path / "cache")
    exports = [json.loads((d / "summary.json").read_text())["sessions"][0]["export"]
               for d in (out, tmp_path / "warm")]
    assert exports == ["saved", "loaded"]
    assert (tmp_path / "warm" / "metrics.csv").read_text() == (out / "metrics.csv").read_text()


@pytest.fixture(scope="module")
def one_device():
    """The one-device reference, in this process (cheaper than ``lib`` on another worker)."""
    import jax

    from npgjax.rl import get_config, make_train

    cfg = get_config("CartPole-v1", "npg", **SETTINGS)
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    return {k: np.asarray(v) for k, v in jax.jit(jax.vmap(make_train(cfg)))(keys)[1].items()}


@pytest.mark.parametrize("shard", ["tasks", "seeds"])
def test_cli_host_devices(one_device, tmp_path, shard):
    """``--shard tasks`` and ``--devices 2`` make their own 2 host devices (no XLA_FLAGS
    here) and match the one-device run to float tolerance."""
    env = _env(1)
    env["XLA_FLAGS"] = env["XLA_FLAGS"].replace(
        "--xla_force_host_platform_device_count=1", "").strip()
    out = tmp_path / shard
    extra = ["--shard", "tasks"] if shard == "tasks" else ["--devices", "2"]
    proc = subprocess.run([sys.executable, "-m", "npgjax.train", *CLI, *extra,
                           "--out", str(out)], env=env, cwd=ROOT, text=True,
                          capture_output=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"x 2, {shard} sharded, 1 process" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["device"]["devices_used"] == 2 and summary["device"]["shard"] == shard
    metrics = _csv(out / "metrics.csv")
    as_csv = np.vectorize(lambda v: float(format(v, ".9g")))
    assert set(metrics) >= set(one_device)
    for name, value in one_device.items():
        _close(name, as_csv(np.asarray(value, np.float64)), metrics[name])


def test_swap_results_exact():
    """Every dtype survives the packing into 32-bit words bit for bit (a 1-device mesh:
    the psum adds nothing), NaN payloads, -0.0 and infinities included."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import PartitionSpec as P

    from npgjax.rl.mesh import make_mesh
    from npgjax.rl.tasks import TASK_AXIS, swap_results

    f32 = np.array([np.nan, -0.0, np.inf, -np.inf, 1e-45, 3.0], np.float32)
    f32[0] = np.frombuffer(np.uint32(0x7FC12345).tobytes(), np.float32)[0]  # NaN payload
    tree = {"f32": f32, "i32": np.array([-(2**31), -1, 7], np.int32),
            "u32": np.array([2**32 - 1, 0], np.uint32), "b": np.array([True, False, True]),
            "i8": np.array([-128, 127, -1], np.int8), "f16": np.array([-0.0, 65504, 1e-7],
                                                                      np.float16),
            "bf16": jnp.array([-2.5, 1e30], jnp.bfloat16), "scalar": np.float32(-1.5),
            "empty": np.zeros((0, 3), np.float32), "nested": (np.arange(6, dtype=np.int32)
                                                             .reshape(2, 3),)}
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), (TASK_AXIS,))
    out = jax.jit(jax.shard_map(swap_results, mesh=mesh, in_specs=P(), out_specs=P()))(tree)
    assert jax.tree.structure(out) == jax.tree.structure(tree)
    for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(out), strict=True):
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes()
    with pytest.raises(ValueError, match="exactly 2 devices; got 1"):
        make_mesh(1, "tasks")


def test_task_trainer_needs_task_mesh():
    from npgjax.rl import get_config
    from npgjax.rl.mesh import make_mesh
    from npgjax.rl.tasks import make_task_trainer

    with pytest.raises(ValueError, match="one axis 'tasks' of 2 devices"):
        make_task_trainer(get_config("CartPole-v1", num_envs=2), make_mesh(1, "envs"))


def test_once_per_session_builds_once_and_reports_failures(tmp_path_factory):
    calls = []
    path = once_per_session(tmp_path_factory, "probe-ok", lambda p: calls.append(p))
    assert once_per_session(tmp_path_factory, "probe-ok", calls.append) == path
    assert calls == [path] and (path / ".done").exists()

    def broken(p):
        raise ValueError("builder broke")

    with pytest.raises(ValueError, match="builder broke"):
        once_per_session(tmp_path_factory, "probe-bad", broken)
    with pytest.raises(pytest.fail.Exception, match="builder broke"):  # a waiting worker
        once_per_session(tmp_path_factory, "probe-bad", broken, timeout=5)
