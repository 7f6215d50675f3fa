"""Issue #13's candidate option: the KL bound scaled by the gradient's signal fraction."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from npgjax.estimators import surrogate_loss
from npgjax.rl import get_config, make_train
from npgjax.rl.algos.npg import signal_fraction

T, E, D = 64, 8, 5


def _loss(params, batch):
    logits = batch["obs"] @ params["w"]
    logp = jax.nn.log_softmax(logits)[jnp.arange(logits.shape[0]), batch["actions"]]
    return surrogate_loss(logp, batch["old_logp"], batch["adv"])


def _batch(key, adv_from_action: bool):
    k1, k2, k3 = jax.random.split(key, 3)
    obs = jax.random.normal(k1, (T * E, D)).at[:, 0].set(1.0)  # a bias feature
    actions = jax.random.bernoulli(k2, 0.5, (T * E,)).astype(jnp.int32)
    noise = jax.random.normal(k3, (T * E,))
    # Signal: advantage +1 for action 1 in every environment; noise: independent of it.
    adv = (2.0 * actions - 1.0) * 3.0 + noise if adv_from_action else noise
    old_logp = jnp.full((T * E,), jnp.log(0.5))
    return {"obs": obs, "actions": actions, "old_logp": old_logp, "adv": adv}


def test_signal_fraction_is_high_for_signal_and_low_for_noise():
    params = {"w": jnp.zeros((D, 2))}
    sig = [float(signal_fraction(_loss, params, _batch(k, True), E))
           for k in jax.random.split(jax.random.PRNGKey(0), 8)]
    noise = [float(signal_fraction(_loss, params, _batch(k, False), E))
             for k in jax.random.split(jax.random.PRNGKey(1), 8)]
    assert all(0.0 <= f <= 1.0 for f in sig + noise)
    assert np.mean(sig) > 0.8, sig
    assert np.mean(noise) < 0.3, noise


def test_signal_fraction_is_zero_for_a_zero_gradient():
    params = {"w": jnp.zeros((D, 2))}
    batch = dict(_batch(jax.random.PRNGKey(2), True), adv=jnp.zeros(T * E))
    assert float(signal_fraction(_loss, params, batch, E)) == 0.0


def test_signal_power_option_validates_and_shrinks_the_bound():
    with pytest.raises(ValueError, match="signal_power"):
        get_config("CartPole-v1", "npg", signal_power=-1.0)
    cfg = get_config("CartPole-v1", "trpo", signal_power=2.0, total_timesteps=1024,
                     num_envs=4, num_steps=64, vf_minibatch=0, vf_epochs=1, eval_every=0)
    _, m = jax.jit(make_train(cfg))(jax.random.PRNGKey(0))
    bound = np.asarray(m["max_kl"])
    # The bound actually used is at most max_kl (decayed) and below it somewhere.
    assert np.all(bound <= cfg.max_kl + 1e-9) and np.all(bound > 0)
    assert bound.min() < 0.99 * cfg.max_kl
    assert np.all(np.asarray(m["kl"]) <= bound + 1e-6)
