"""The README's 15-line example runs and makes a KL-bounded step."""

from __future__ import annotations

import pathlib
import re

import jax
import jax.numpy as jnp
import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_quickstart_has_two_commands():
    text = README.read_text()
    quick = text.split("## Quickstart", 1)[1].split("##", 1)[0]
    bash = re.findall(r"```bash\n(.*?)```", quick, flags=re.S)
    lines = [ln for ln in bash[0].splitlines() if ln.strip()]
    assert [ln.split("#")[0].strip() for ln in lines] == ["make demo", "make test"]


def test_readme_example_runs_and_respects_max_kl():
    ns: dict = {}
    exec(compile(_blocks()[0], "README.md", "exec"), ns)
    npgjax, params, log_prob_fn = ns["npgjax"], ns["params"], ns["log_prob_fn"]
    k1, k2 = jax.random.split(jax.random.PRNGKey(1))
    obs = jax.random.normal(k1, (256, 4))
    logits = ns["policy"].apply(params, obs)
    actions = npgjax.Categorical(logits).sample(k2)
    batch = {"obs": obs, "actions": actions}
    batch["old_logp"] = log_prob_fn(params, batch)
    batch["adv"] = jnp.where(actions == 1, 1.0, -1.0) * obs[:, 0]
    new, state = ns["update"](params, ns["opt_state"], batch)
    old_d = npgjax.Categorical(logits)
    new_d = npgjax.Categorical(ns["policy"].apply(new, obs))
    kl = float(jnp.mean(old_d.kl(new_d)))
    assert kl == pytest.approx(0.01, rel=0.3)
    assert float(state[0].cosine) > 0
    assert ns["loss_fn"](new, batch) < ns["loss_fn"](params, batch)
