"""Shared fixtures: small MLP policies in plain JAX and a float64 switch."""

from __future__ import annotations

import atexit
import itertools
import os
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

# LLVM O0 for every compile of the suite, and of its subprocesses (they inherit the
# environment): most of the suite's time is XLA compiling small programs that run for
# milliseconds. The whole suite at O0 took 0.80x the time of O1 (8:02 against 9:54 of
# wall time, 14:29 against 18:10 of user time; one run each, back to back, 2-core Intel
# Xeon, session 28); O1 had itself been ~20% quicker than XLA's default O3. The library
# compiles at O1 (npgjax.rl.compiler_options(): the command line passes it to each
# compile, which overrides XLA_FLAGS), and O0 rounds differently from O1 and from one
# program to another: a test that claims two *different* programs agree bit for bit
# compiles them with compiler_options() (tests/test_xla.py checks that it overrides
# this flag). A level already in XLA_FLAGS wins (e.g. =1 to run the suite as the library
# compiles; benchmarks/gpu_run.sh does).
_FLAGS = os.environ.get("XLA_FLAGS", "")
if "xla_backend_optimization_level" not in _FLAGS:
    _FLAGS = f"{_FLAGS} --xla_backend_optimization_level=0".strip()
# XLA's older loop emitters for the suite's fusions: they compile in about 0.65x the
# time of the MLIR fusion emitters and run training about 35% slower, a good trade for
# tests, which compile far more than they run (tests/test_rl_open.py 105-121 s -> 75-77
# s, tests/test_docs.py 345 s -> 265 s, 2-core AMD EPYC, session 16). The library's
# compiler_options() keep the new emitters: there run time counts (benchmarks/README.md,
# "compile_time.py"). Delete when XLA drops the flag (XLA then rejects it at start-up).
# A value already in XLA_FLAGS wins.
if "xla_cpu_use_fusion_emitters" not in _FLAGS:
    _FLAGS = f"{_FLAGS} --xla_cpu_use_fusion_emitters=false"
os.environ["XLA_FLAGS"] = _FLAGS

# The command line's persistent compilation cache defaults to ~/.cache/npgjax/jax. The
# suite must not write into a user's home, nor run faster because an earlier run left
# entries there (CI starts cold): every process of the session, subprocesses included,
# gets a scratch directory instead. Tests that need their own directory still set it.
os.environ["NPGJAX_CACHE_DIR"] = tempfile.mkdtemp(prefix="npgjax-test-cache-")
atexit.register(shutil.rmtree, os.environ["NPGJAX_CACHE_DIR"], ignore_errors=True)

# One persistent compilation cache for the whole session: the controller creates it, and
# the xdist workers and every subprocess inherit it through the environment. Programs
# that take at least a second to compile are written; a worker, a subprocess or a later
# test that compiles the same program reads it (e.g. the second multi-device subprocess
# of tests/test_sharding_core.py). A minimum of 0 wrote thousands of small entries and
# made the suite slower (session 15: 19:41 against 14:57); with 1 s it is about 8%
# faster (session 17: 14:01 against 15:15). JAX_COMPILATION_CACHE_DIR already set wins.
if "NPGJAX_TEST_JAX_CACHE" not in os.environ:
    os.environ["NPGJAX_TEST_JAX_CACHE"] = tempfile.mkdtemp(prefix="npgjax-test-jax-cache-")
    atexit.register(shutil.rmtree, os.environ["NPGJAX_TEST_JAX_CACHE"], ignore_errors=True)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.environ["NPGJAX_TEST_JAX_CACHE"])
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1.0")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import pytest  # noqa: E402

import npgjax  # noqa: E402


def pythonpath() -> str:
    """``PYTHONPATH`` for a subprocess: the repository first, then the caller's (packages
    installed with ``pip --target``, as on the GPU machine, stay importable)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))


def once_per_session(tmp_path_factory: pytest.TempPathFactory, name: str,
                     build: Callable[[Path], None], timeout: float = 1200.0) -> Path:
    """A directory that ``build(path)`` fills once per test session, across xdist workers.

    A module-scoped fixture runs once per *worker*, and the tests of one module are
    spread over the workers: an expensive fixture (a multi-device subprocess) ran twice.
    The first worker to create the directory (an atomic ``mkdir`` in the temporary root
    the workers share) builds it; the others wait for its ``.done`` marker, or fail with
    the builder's error.
    """
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # one directory per worker below the session's root
    path = root / f"once-{name}"
    try:
        path.mkdir()
    except FileExistsError:
        deadline = time.monotonic() + timeout
        while not (path / ".done").exists():
            if (path / ".failed").exists():
                pytest.fail(f"{name}: " + (path / ".failed").read_text()[-3000:])
            if time.monotonic() > deadline:
                pytest.fail(f"{name}: another worker did not finish within {timeout:.0f} s")
            time.sleep(0.2)
        return path
    try:
        build(path)
    except BaseException:
        (path / ".failed").write_text(traceback.format_exc())
        raise
    (path / ".done").write_text("ok")
    return path


@pytest.fixture(autouse=True)
def _no_leaked_compilation_cache():
    """A test must not leave JAX's persistent compilation cache pointed elsewhere (e.g.
    an in-process ``npgjax.train.main`` without ``--no-compile-cache`` turns on its own,
    which writes every later compile of the worker to disk, however quick)."""
    before = jax.config.jax_compilation_cache_dir
    yield
    assert jax.config.jax_compilation_cache_dir == before, (
        "the test switched JAX's persistent compilation cache on and left it on")


@pytest.fixture
def x64():
    """Run the test body with float64 enabled."""
    with jax.enable_x64(True):
        yield


@pytest.fixture
def full_f32_matmuls():
    """Full float32 products and convolutions in the test body. On GPUs XLA's default
    precision multiplies float32 in TF32 (about 1e-3 relative; seen on an NVIDIA H200),
    which breaks 1e-5 comparisons of two ways of computing the same thing; on the CPU
    this is the default anyway."""
    with jax.default_matmul_precision("highest"):
        yield


def init_mlp(key, sizes, dtype=jnp.float32):
    """A plain-dict MLP: [{'w': [in, out], 'b': [out]}, ...]."""
    params = []
    keys = jax.random.split(key, len(sizes) - 1)
    for k, (i, o) in zip(keys, itertools.pairwise(sizes), strict=True):
        kw, kb = jax.random.split(k)
        params.append(
            {
                "w": (jax.random.normal(kw, (i, o)) / jnp.sqrt(i)).astype(dtype),
                "b": (0.1 * jax.random.normal(kb, (o,))).astype(dtype),
            }
        )
    return params


def mlp(params, x):
    for layer in params[:-1]:
        x = jnp.tanh(x @ layer["w"] + layer["b"])
    return x @ params[-1]["w"] + params[-1]["b"]


def make_problem(head: str, key=0, n=24, obs_dim=3, hidden=5, act_dim=3, dtype=jnp.float64):
    """An MLP policy, a batch sampled from it, and its dist_fn / log_prob_fn."""
    key = jax.random.PRNGKey(key)
    k1, k2, k3, k4 = jax.random.split(key, 4)
    params = {"net": init_mlp(k1, [obs_dim, hidden, act_dim], dtype)}
    if head == "gaussian":
        params["log_std"] = (0.3 * jax.random.normal(k4, (act_dim,))).astype(dtype)
    obs = jax.random.normal(k2, (n, obs_dim), dtype)

    def dist_fn(p, batch):
        o = mlp(p["net"], batch["obs"])
        if head == "categorical":
            return npgjax.Categorical(o)
        return npgjax.DiagGaussian(o, p["log_std"])

    actions = dist_fn(params, {"obs": obs}).sample(k3)
    batch = {"obs": obs, "actions": actions}

    def log_prob_fn(p, b):
        return dist_fn(p, b).log_prob(b["actions"])

    return params, batch, dist_fn, log_prob_fn
