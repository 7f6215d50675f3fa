"""Warm starts without the trainer (npgjax/cli/warm.py): found by the request, same bits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

REQUEST = {"env": "CartPole-v1", "algo": "npg", "hidden": [8], "chunk_updates": 2}


def _trainer():
    from npgjax.rl import get_config, make_trainer

    return make_trainer(get_config("CartPole-v1", "npg", num_envs=2, num_steps=8,
                                   hidden=(8,), total_timesteps=64))


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    import jax

    from npgjax.cli.compile import compile_training

    cache = str(tmp_path_factory.mktemp("warm"))
    keys = jax.random.split(jax.random.PRNGKey(3), 2)
    trainer = _trainer()
    init, run_chunk, *_ = compile_training(trainer, keys, 2, cache, request=REQUEST)
    state, metrics = run_chunk(init(keys), 0)
    state, metrics = run_chunk(state, 2)
    return cache, keys, trainer, jax.tree.leaves(state), metrics


def test_same_programs_and_bits(compiled):
    from npgjax.cli.warm import load_training

    cache, keys, trainer, leaves, metrics = compiled
    warm = load_training(cache, REQUEST, keys)
    assert warm is not None
    assert (warm.chunk, warm.num_updates, warm.batch_size) == (2, 4, 16)
    assert warm.config == repr(trainer.config)
    state, m = warm.run_chunk(warm.init(keys), 0)
    state, m = warm.run_chunk(state, 2)
    assert isinstance(state, tuple) and len(state) == len(leaves)
    for a, b in zip(state, leaves, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert set(m) == set(metrics)
    for k in m:
        np.testing.assert_array_equal(np.asarray(m[k]), np.asarray(metrics[k]))


def test_none_when_anything_differs(compiled, tmp_path):
    import jax

    from npgjax.cli import warm as w

    cache, keys, *_ = compiled
    assert w.load_training(None, REQUEST, keys) is None
    assert w.load_training(cache, dict(REQUEST, chunk_updates=4), keys) is None
    assert w.load_training(cache, REQUEST, keys[:1]) is None  # another seed count
    assert w.load_training(str(tmp_path), REQUEST, keys) is None  # another directory
    # A damaged manifest, or one whose export is gone, is a miss too (not an error).
    path = w._manifest_path(cache, REQUEST, keys)
    good = path.read_text()
    try:
        path.write_text("{not json")
        assert w.load_training(cache, REQUEST, keys) is None
        path.write_text(json.dumps(dict(json.loads(good), export="gone.jaxexport")))
        assert w.load_training(cache, REQUEST, keys) is None
        path.write_text(json.dumps(dict(json.loads(good), format=0)))
        assert w.load_training(cache, REQUEST, keys) is None
        path.write_text(json.dumps({k: v for k, v in json.loads(good).items()
                                    if k != "options"}))
        assert w.load_training(cache, REQUEST, keys) is None
    finally:
        path.write_text(good)
    assert w.load_training(cache, REQUEST, jax.random.split(jax.random.PRNGKey(9), 2))


def test_quick_compile_is_part_of_the_key_and_kept(compiled):
    import jax

    from npgjax.cli.compile import compile_training
    from npgjax.cli.warm import _manifest_path, load_training
    from npgjax.rl import compiler_options

    cache, keys, trainer, *_ = compiled
    quick = dict(REQUEST, quick_compile=True)
    assert load_training(cache, quick, keys) is None  # the plain programs do not serve it
    init, run_chunk, *_ = compile_training(trainer, keys, 2, cache, request=quick,
                                           quick_compile=True)
    manifest = json.loads(_manifest_path(cache, quick, keys).read_text())
    assert manifest["options"] == compiler_options(quick=True)  # what the warm start uses
    warm = load_training(cache, quick, keys)
    _, m = warm.run_chunk(warm.init(keys), 0)
    _, expected = run_chunk(init(keys), 0)
    for k in m:
        np.testing.assert_array_equal(np.asarray(m[k]), np.asarray(expected[k]))
    assert jax.tree.leaves(m)


_FRESH = textwrap.dedent("""
    import json, sys
    import npgjax.cli.warm as w
    import jax
    jax.config.update("jax_num_cpu_devices", 2)
    jax.config.update("jax_compilation_cache_dir", sys.argv[1])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    request = {"shard": "tasks", "hidden": [8]}
    keys = jax.random.split(jax.random.PRNGKey(5), 2)
    if sys.argv[2] == "compile":
        from npgjax.cli.compile import compile_training
        from npgjax.rl import get_config, make_mesh
        from npgjax.rl.tasks import make_task_trainer
        mesh = make_mesh(2, "tasks")
        cfg = get_config("CartPole-v1", "trpo", num_envs=2, num_steps=8, hidden=(8,),
                         total_timesteps=32, vf_minibatch=8)
        init, run_chunk, *_ = compile_training(make_task_trainer(cfg, mesh), keys, 2,
                                               sys.argv[1], mesh=mesh, request=request)
        leaves = jax.tree.leaves(init(keys))
    else:
        warm = w.load_training(sys.argv[1], request, keys)
        init, run_chunk = warm.init, warm.run_chunk
        leaves = init(keys)
    _, m = run_chunk(leaves, 0)
    print(json.dumps({"ret": [float(x) for x in m["train_return"].ravel()],
                      "kl": [float(x) for x in m["kl"].ravel()],
                      "rl_layer": sorted(k for k in ("flax", "gymnax", "optax", "npgjax.rl")
                                         if k in sys.modules)}))
""")


def test_fresh_process_on_two_devices_skips_the_rl_layer(tmp_path):
    """``--shard tasks``'s replicated programs read back in a fresh process that never
    imports flax, gymnax, optax or npgjax.rl, with the same metrics."""
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    out = []
    for phase in ("compile", "warm"):
        proc = subprocess.run([sys.executable, "-c", _FRESH, str(tmp_path), phase],
                              capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        out.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert out[0]["ret"] == out[1]["ret"] and out[0]["kl"] == out[1]["kl"]
    assert "flax" in out[0]["rl_layer"] and out[1]["rl_layer"] == []


_LAPACK = textwrap.dedent("""
    import sys
    import jax
    import jax.numpy as jnp
    from jax import export
    from jax._src.export import _export
    from npgjax.cli.warm import _lapack_setup_deferred
    real = _export._ensure_backends_initialized
    data = export.export(jax.jit(lambda x: (jnp.tanh(x) * 2,)))(jnp.ones(3)).serialize()
    exp = export.deserialize(data)
    with _lapack_setup_deferred(bytes(data)):
        jax.jit(exp.call).lower(jnp.ones(3))
    deferred = "scipy.linalg" in sys.modules
    assert _export._ensure_backends_initialized is real  # restored
    with _lapack_setup_deferred(b"... lapack_sgeqrf_ffi ..."):  # one that calls LAPACK
        assert _export._ensure_backends_initialized is real
    jax.jit(exp.call).lower(jnp.ones(3)).compile()
    print(deferred, "scipy.linalg" in sys.modules)
""")


def test_lapack_setup_deferred_only_while_inside():
    """Lowering an exported program without LAPACK calls inside the workaround does not
    import scipy.linalg; outside it JAX still does (when it stops, delete the workaround:
    this test then fails)."""
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run([sys.executable, "-c", _LAPACK], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["False", "True"]


def test_with_tree_gives_the_trainers_state_or_none(compiled):
    """The command line's path: the prefetched programs with the state's tree, unless
    they were compiled for another config."""
    import jax

    from npgjax.cli.warm import prefetch_training, with_tree
    from npgjax.rl import get_config, make_trainer

    cache, keys, trainer, leaves, metrics = compiled
    init, run_chunk, lower_s, wait_s, memo = with_tree(
        prefetch_training(cache, REQUEST, keys), trainer, keys)
    assert run_chunk.export == "warm" and not memo and lower_s >= 0 and wait_s >= 0
    state, _ = run_chunk(init(keys), 0)
    state, m = run_chunk(state, 2)
    assert jax.tree.structure(state) == jax.tree.structure(jax.eval_shape(
        jax.vmap(trainer.init), keys))
    for a, b in zip(jax.tree.leaves(state), leaves, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    other = make_trainer(get_config("CartPole-v1", "npg", num_envs=2, num_steps=8,
                                    hidden=(8,), total_timesteps=64, max_kl=0.02))
    assert with_tree(prefetch_training(cache, REQUEST, keys), other, keys) is None
    assert with_tree(None, trainer, keys) is None
