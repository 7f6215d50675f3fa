"""Check a wheel of npgjax installed without extras (run in that fresh environment).

Usage: python .ci/check_core_install.py path/to/npgjax-*.whl

Asserts that the wheel ships LICENSE and py.typed, that the environment holds none of
the RL layer's or the command line's dependencies, that ``import npgjax`` works and
makes a natural-gradient step, and that ``import npgjax.rl`` fails with an error that
names the extra to install.
"""

from __future__ import annotations

import importlib.metadata
import sys
import zipfile

wheel = zipfile.ZipFile(sys.argv[1])
names = wheel.namelist()
assert "npgjax/py.typed" in names, "py.typed is not in the wheel"
assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), "no LICENSE in the wheel"

installed = {d.metadata["Name"].lower() for d in importlib.metadata.distributions()}
optional = {"gymnax", "flax", "matplotlib", "seaborn", "gymnasium", "tqdm", "orbax-checkpoint"}
extra = installed & optional
assert not extra, f"installed without extras, yet present: {sorted(extra)}"
print(f"{len(installed)} distributions installed without extras:", ", ".join(sorted(installed)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

import npgjax  # noqa: E402

params = {"w": jnp.zeros((3, 2))}
obs = jax.random.normal(jax.random.PRNGKey(0), (16, 3))
batch = {"obs": obs, "actions": (obs[:, 0] > 0).astype(jnp.int32)}


def log_prob_fn(p, b):
    return npgjax.Categorical(b["obs"] @ p["w"]).log_prob(b["actions"])


def loss(p):
    return -jnp.mean(log_prob_fn(p, batch))


tx = npgjax.npg(log_prob_fn, max_kl=0.01)
updates, _ = tx.update(jax.grad(loss)(params), tx.init(params), params, batch=batch)
new = optax.apply_updates(params, updates)
assert float(loss(new)) < float(loss(params)), "the natural-gradient step did not lower the loss"
print(f"npgjax {npgjax.__version__}: import and one npg step ok (jax {jax.__version__})")

try:
    import npgjax.rl
except ImportError as exc:
    print(f"import npgjax.rl without the extra: {exc}")
    assert "npgjax[rl]" in str(exc), "the ImportError does not name the extra npgjax[rl]"
else:
    raise AssertionError("npgjax.rl imported without its dependencies")
print("core install check passed")
