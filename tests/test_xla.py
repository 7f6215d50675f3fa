"""npgjax.rl.compiler_options: real XLA options, and training compiled with them agrees."""

import os
import re

import jax
import numpy as np
import pytest

from npgjax.rl import compiler_options, get_config, make_train


def test_options_per_backend():
    assert compiler_options("cpu") == {"xla_backend_optimization_level": 1}
    assert compiler_options("gpu") == {} and compiler_options("tpu") == {}
    assert compiler_options() == compiler_options(jax.default_backend())
    opts = compiler_options("cpu")
    opts["xla_backend_optimization_level"] = 3  # a copy: the module's options stay
    assert compiler_options("cpu")["xla_backend_optimization_level"] == 1
    assert compiler_options("cpu", quick=True) == {"xla_backend_optimization_level": 1,
                                                   "xla_cpu_use_fusion_emitters": False}
    assert compiler_options("gpu", quick=True) == {} == compiler_options("tpu", quick=True)


def test_quick_options_are_real_and_training_agrees():
    # XLA rejects names it does not know (see below): this fails if the flag goes away.
    cfg = get_config("CartPole-v1", "npg", total_timesteps=128, num_envs=2, num_steps=32,
                     vf_minibatch=0, vf_epochs=2, eval_every=0, hidden=(16,))
    key = jax.random.PRNGKey(2)
    lowered = jax.jit(make_train(cfg)).lower(key)
    cpu = jax.default_backend() == "cpu"
    quick = lowered.compile(compiler_options(quick=True) or None)
    # The reference with the fusion emitters on, whatever XLA_FLAGS (tests/conftest.py) say.
    ref = lowered.compile({"xla_backend_optimization_level": 1,
                           "xla_cpu_use_fusion_emitters": True} if cpu else None)
    (s_q, m_q), (s_r, m_r) = quick(key), ref(key)
    for name in ("kl", "entropy", "value_loss", "explained_variance"):
        np.testing.assert_allclose(m_q[name], m_r[name], rtol=1e-3, atol=1e-6, err_msg=name)
    for a, b in zip(jax.tree.leaves(s_q.pi_params), jax.tree.leaves(s_r.pi_params),
                    strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_suite_level_and_pinned_options():
    # tests/conftest.py sets LLVM O0 in XLA_FLAGS for the whole suite; compiler_options()
    # given to a compile overrides it (the tests that compare two programs bit for bit
    # rely on that), and the two levels really round differently.
    if jax.default_backend() != "cpu":
        pytest.skip("LLVM optimisation levels are the CPU's")
    level = re.search(r"xla_backend_optimization_level=(\d)", os.environ.get("XLA_FLAGS", ""))
    cfg = get_config("CartPole-v1", "npg", total_timesteps=64, num_envs=2, num_steps=32,
                     vf_epochs=2, eval_every=0, hidden=(16,))
    key = jax.random.PRNGKey(1)
    lowered = jax.jit(make_train(cfg)).lower(key)
    plain, o0, o1, pinned = (jax.tree.leaves(c(key)[1]) for c in (
        lowered.compile(), lowered.compile({"xla_backend_optimization_level": 0}),
        lowered.compile({"xla_backend_optimization_level": 1}),
        lowered.compile(compiler_options())))

    def same(a, b):
        return all(np.array_equal(x, y, equal_nan=True) for x, y in zip(a, b, strict=True))

    assert same(pinned, o1) and not same(o0, o1)
    if level is None or level.group(1) == "0":  # the suite's default
        assert same(plain, o0) and not same(plain, pinned)


def test_xla_takes_the_options_and_training_agrees():
    cfg = get_config("CartPole-v1", "npg", total_timesteps=128, num_envs=2, num_steps=32,
                     vf_minibatch=0, vf_epochs=2, eval_every=0, hidden=(16,))
    keys = jax.random.PRNGKey(1)
    lowered = jax.jit(make_train(cfg)).lower(keys)
    with pytest.raises(Exception, match="no_such_xla_option"):  # XLA checks the names
        lowered.compile({"no_such_xla_option": 1})
    cpu = jax.default_backend() == "cpu"
    fast = lowered.compile(compiler_options("cpu") if cpu else None)
    # The reference at LLVM O3, XLA's default on the CPU (explicit, whatever XLA_FLAGS say).
    ref = lowered.compile({"xla_backend_optimization_level": 3} if cpu else None)
    (s_fast, m_fast), (s_ref, m_ref) = fast(keys), ref(keys)
    if cpu:  # really two programs: O1 rounds differently from O3 somewhere
        assert any(not np.array_equal(a, b, equal_nan=True) for a, b in zip(
            jax.tree.leaves(m_fast), jax.tree.leaves(m_ref), strict=True))
    # Two updates: the rounding differs (LLVM O1 against O3), the numbers barely do
    # (not cg_residual: it is rounding noise itself, ~1e-6).
    for name in ("kl", "entropy", "value_loss", "explained_variance"):
        np.testing.assert_allclose(m_fast[name], m_ref[name], rtol=1e-3, atol=1e-6,
                                   err_msg=name)
    for a, b in zip(jax.tree.leaves(s_fast.pi_params), jax.tree.leaves(s_ref.pi_params),
                    strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("quick", [False, True])
@pytest.mark.parametrize("path", ["one_device", "sharded"])
def test_command_line_compiles_with_the_options(path, quick, monkeypatch):
    # Both of the command line's compile paths hand compiler_options(quick=...) to XLA:
    # with a name XLA does not know in it, compiling the chunk fails naming it.
    from npgjax.cli.compile import compile_training
    from npgjax.cli.devices import compile_sharded
    from npgjax.rl import make_trainer
    from npgjax.rl.mesh import make_mesh

    monkeypatch.setattr("npgjax.rl.xla._CPU_QUICK" if quick else "npgjax.rl.xla._CPU_OPTIONS",
                        {"no_such_chunk_option": 1})
    monkeypatch.setattr("npgjax.rl.xla.jax.default_backend", lambda: "cpu")
    cfg = get_config("CartPole-v1", "npg", total_timesteps=96, num_envs=2, num_steps=16,
                     vf_epochs=1, eval_every=0, hidden=(5,))  # memoised by no other test
    keys = jax.random.split(jax.random.PRNGKey(0), 1)
    with pytest.raises(Exception, match="no_such_chunk_option"):
        if path == "sharded":
            compile_sharded(cfg, make_mesh(1), keys, 3, quick_compile=quick)
        else:
            compile_training(make_trainer(cfg), keys, 3, quick_compile=quick)


def _draws(k):
    k1, k2 = jax.random.split(k)
    return (jax.random.bits(k1, (257,)), jax.random.uniform(k2, (3, 5)),
            jax.random.categorical(k, jax.numpy.zeros((64, 3))), jax.random.split(k2, 4))


def test_unrolled_threefry_same_bits_without_loops():
    # On the CPU JAX lowers each threefry hash to a while loop; unrolled_threefry() lowers
    # the same hash as straight-line code, for the same bits. When the first assertion
    # fails, JAX no longer rolls threefry on the CPU: delete unrolled_threefry.
    from npgjax.rl.xla import unrolled_threefry

    key = jax.random.PRNGKey(7)
    rolled = jax.jit(_draws).lower(key)
    if jax.default_backend() == "cpu":
        assert "stablehlo.while" in rolled.as_text()
    with pytest.raises(RuntimeError, match="inside"), unrolled_threefry():
        with unrolled_threefry():  # nested
            unrolled = jax.jit(lambda k: _draws(k)).lower(key)  # a new function: not cached
        raise RuntimeError("inside")
    assert "stablehlo.while" not in unrolled.as_text()
    if jax.default_backend() == "cpu":  # the rule is back after both exits
        assert "stablehlo.while" in jax.jit(lambda k: _draws(k)).lower(key).as_text()
    for a, b in zip(jax.tree.leaves(rolled.compile()(key)),
                    jax.tree.leaves(unrolled.compile()(key)), strict=True):
        np.testing.assert_array_equal(a, b)


def test_command_line_lowers_threefry_unrolled(tmp_path):
    # compile_training's lowering (fresh and through jax.export) is inside unrolled_threefry.
    from npgjax.cli.compile import _lowered

    key = jax.random.PRNGKey(3)
    for path in (None, tmp_path / "draws.jaxexport"):
        lowered, how = _lowered(_draws, {}, [key], path)
        assert how in ("traced", "saved")
        assert "stablehlo.while" not in lowered.as_text()
        np.testing.assert_array_equal(lowered.compile()(key)[0], jax.jit(_draws)(key)[0])


def test_init_lowered_with_loops_and_compiled_cheaply_gives_the_same_bits(tmp_path):
    # init runs once: threefry keeps JAX's loops there (a smaller program) and XLA
    # compiles it with init_compiler_options(); the draws are the chunk's bits.
    from npgjax.cli.compile import _lowered, init_compiler_options

    assert init_compiler_options("gpu") is None and init_compiler_options("tpu") is None
    assert init_compiler_options("cpu") == {"xla_backend_optimization_level": 0,
                                            "xla_cpu_use_fusion_emitters": False}

    key = jax.random.PRNGKey(5)
    lowered, how = _lowered(lambda k: _draws(k), {}, [key], tmp_path / "i.jaxexport",
                            unroll=False)
    assert how == "saved"
    if jax.default_backend() == "cpu":
        assert "stablehlo.while" in lowered.as_text()
    unrolled, _ = _lowered(_draws, {}, [key], None)
    for a, b in zip(jax.tree.leaves(lowered.compile(init_compiler_options())(key)),
                    jax.tree.leaves(unrolled.compile()(key)), strict=True):
        np.testing.assert_array_equal(a, b)
