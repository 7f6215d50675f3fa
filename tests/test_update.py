"""The update's pieces (npgjax.rl.update): the policy step and the critic fit read the
rollout, not each other, so ``run_pair`` may run them in any order or place."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from npgjax.rl import compiler_options, get_config, make_trainer


def _update(run_pair, **kw):
    cfg = get_config("CartPole-v1", "trpo", num_envs=2, num_steps=16, **kw)
    trainer = make_trainer(cfg, run_pair=run_pair)
    state = trainer.init(jax.random.PRNGKey(0))
    # Two programs compared bit for bit: compiled as the library compiles (the suite's
    # LLVM O0 may round two programs differently; tests/conftest.py).
    return jax.jit(lambda s: jax.lax.scan(lambda s, _: trainer.update(s), s, None, length=3),
                   compiler_options=compiler_options())(state)


def _critic_first(first, second):
    critic = second()
    return first(), critic


@pytest.mark.parametrize("network", ["mlp", "gru"])
def test_halves_in_either_order_give_the_same_updates(network):
    plain = _update(None, network=network)
    swapped = _update(_critic_first, network=network)
    assert jax.tree.structure(plain) == jax.tree.structure(swapped)
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(swapped), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_run_pair_gets_the_policy_step_then_the_critic_fit():
    seen = {}

    def spy(first, second):
        seen["policy"], seen["critic"] = first(), second()
        return seen["policy"], seen["critic"]

    state, _ = _update(spy)
    pi_params, _, diagnostics = seen["policy"]
    vf_params, _ = seen["critic"]
    assert jax.tree.structure(pi_params) == jax.tree.structure(state.pi_params)
    assert jax.tree.structure(vf_params) == jax.tree.structure(state.vf_params)
    assert "kl" not in diagnostics and "cg_iterations" in diagnostics
