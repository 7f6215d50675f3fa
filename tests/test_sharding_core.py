"""Fisher products, the natural step and TRPO's line search over 4 CPU devices.

The checks run once in a subprocess with ``--xla_force_host_platform_device_count=4``
(set before jax is imported), so the rest of the suite keeps one device. Run as a
script, this file is that subprocess: it prints one JSON line of measurements, and the
tests below assert on it. Each sharded result (``shard_map`` with ``axis_name``, and
plain ``jit`` over a ``NamedSharding`` batch with no axis name) is compared with the
single-device result on the same global batch, float32, to 1e-5 relative.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

DEVICES = 4
RTOL = 1e-5


def _rel(a, b) -> float:
    """max |a - b| / max |b| over a pytree (0 for two zero trees)."""
    import jax
    import numpy as np

    la = [np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(a)]
    lb = [np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(b)]
    diff = max(float(np.max(np.abs(x - y), initial=0.0)) for x, y in zip(la, lb, strict=True))
    scale = max(float(np.max(np.abs(y), initial=0.0)) for y in lb)
    return diff / scale if scale > 0 else diff


def _error(fn) -> str:
    try:
        fn()
    except Exception as e:  # the message is what the test checks
        return f"{type(e).__name__}: {e}"
    return ""


def _problem():
    """A small MLP categorical policy, a masked global batch of 32 and its losses."""
    import jax
    import jax.numpy as jnp

    import npgjax

    k = jax.random.split(jax.random.PRNGKey(0), 6)
    params = {
        "w1": jax.random.normal(k[0], (3, 8)) / jnp.sqrt(3.0), "b1": jnp.zeros(8),
        "w2": jax.random.normal(k[1], (8, 3)) / jnp.sqrt(8.0), "b2": 0.1 * jnp.ones(3),
    }
    n = 8 * DEVICES
    batch = {
        "obs": jax.random.normal(k[2], (n, 3)),
        "act": jax.random.randint(k[3], (n,), 0, 3),
        "adv": jax.random.normal(k[4], (n,)),
    }
    mask = (jax.random.uniform(k[5], (n,)) > 0.25).astype(jnp.float32)

    def dist_fn(p, b):
        h = jnp.tanh(b["obs"] @ p["w1"] + p["b1"])
        return npgjax.Categorical(h @ p["w2"] + p["b2"])

    def log_prob_fn(p, b):
        return dist_fn(p, b).log_prob(b["act"])

    batch["logp_old"] = log_prob_fn(params, batch)

    def loss_fn(p, b):  # TRPO's surrogate, a per-device mean over equal shards
        return -jnp.mean(jnp.exp(log_prob_fn(p, b) - b["logp_old"]) * b["adv"])

    def masked_sums(p, b, m):
        return jnp.sum(m * -log_prob_fn(p, b) * b["adv"]), jnp.sum(m)

    return params, batch, mask, dist_fn, log_prob_fn, loss_fn, masked_sums


def _natural_txs(log_prob_fn, dist_fn, axis, kinds):
    import npgjax

    # CG runs to convergence (about 13 iterations here): a truncated CG amplifies float32
    # rounding (1e-4 from float64 at 10 iterations), which would hide the sharding error.
    kw = dict(max_kl=0.01, damping=0.1, cg_iters=30, axis_name=axis)
    txs = {
        "empirical": lambda: npgjax.precondition_by_fisher(log_prob_fn, **kw),
        "centered": lambda: npgjax.precondition_by_fisher(log_prob_fn, centered=True, **kw),
        "analytic": lambda: npgjax.precondition_by_fisher(dist_fn=dist_fn, **kw),
        "sample_space": lambda: npgjax.precondition_by_fisher(
            log_prob_fn, solver="sample_space", **kw),
    }
    return {k: txs[k]() for k in kinds}


ALL_KINDS = ("empirical", "centered", "analytic", "sample_space")
JIT_KINDS = ("empirical", "analytic")
PMAP_KINDS = ("centered", "analytic")


def _main() -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    import npgjax
    from npgjax._tree import check_divisible, vary

    try:
        shard_map = jax.shard_map
    except AttributeError:  # older jax
        from jax.experimental.shard_map import shard_map
    ax = "batch"
    mesh = Mesh(np.array(jax.devices()[:DEVICES]), (ax,))
    params, batch, mask, dist_fn, log_prob_fn, loss_fn, masked_sums = _problem()
    out: dict = {"devices": jax.device_count(), "rel": {}, "errors": {}, "seconds": {}}
    rel = out["rel"]
    t0 = time.perf_counter()

    def smap(f, in_specs, out_specs=None):
        out_specs = P() if out_specs is None else out_specs
        return jax.jit(shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs))

    # -- natural steps: single device vs shard_map(axis_name) vs jit(NamedSharding)
    def masked_grad(p, b, m, axis):
        def loss(p):
            s, c = masked_sums(p, b, m)
            if axis is not None:
                s, c = jax.lax.psum((s, c), axis)
            return s / c
        return jax.grad(loss)(p)

    def steps(axis, kinds=ALL_KINDS):
        def f(p, b, m):
            g = masked_grad(p, b, m, axis)
            res = {"grad": g}
            for name, tx in _natural_txs(log_prob_fn, dist_fn, axis, kinds).items():
                u, s = tx.update(g, tx.init(p), p, batch=b, fisher_mask=m)
                res[name] = (u, s.grad_dot_natgrad, s.predicted_kl, s.status)
            return res
        return f

    ref = jax.jit(steps(None))(params, batch, mask)
    sharded = smap(steps(ax), (P(), P(ax), P(ax)))(params, batch, mask)
    placed = jax.device_put((batch, mask), NamedSharding(mesh, P(ax)))
    out["placed_devices"] = len(placed[0]["obs"].sharding.device_set)
    jitted = jax.jit(steps(None, JIT_KINDS))(params, *placed)
    for key in ref:
        rel[f"shard_map/{key}"] = _rel(sharded[key], ref[key])
    for key in jitted:
        rel[f"jit/{key}"] = _rel(jitted[key], ref[key])
    out["status"] = {k: int(v[3]) for k, v in ref.items() if k != "grad"}
    out["status_sharded"] = {k: int(v[3]) for k, v in sharded.items() if k != "grad"}

    def pmapped(p, b, m):  # pmap's gradient: the psum of per-device sums
        s = jax.grad(lambda p: masked_sums(p, b, m)[0])(p)
        g = jax.tree.map(lambda x: x / jax.lax.psum(jnp.sum(m), "i"), jax.lax.psum(s, "i"))
        res = {"grad": g}
        for name, tx in _natural_txs(log_prob_fn, dist_fn, "i", PMAP_KINDS).items():
            res[name] = tx.update(g, tx.init(p), p, batch=b, fisher_mask=m)[:1]
        return res

    def split(x):
        return x.reshape((DEVICES, -1) + x.shape[1:])

    pm = jax.pmap(pmapped, axis_name="i", in_axes=(None, 0, 0))(
        params, jax.tree.map(split, batch), split(mask))
    for key in pm:
        first = jax.tree.map(lambda x: x[0], pm[key])
        rel[f"pmap/{key}"] = _rel(first, ref[key][:1] if key != "grad" else ref[key])
        rel[f"pmap_devices_agree/{key}"] = _rel(pm[key], jax.tree.map(
            lambda x: jnp.broadcast_to(x[0], x.shape), pm[key]))
    out["seconds"]["natural"] = time.perf_counter() - t0

    # -- TRPO (analytic Fisher + line search) and a line search that backtracks
    def search(axis):
        """npgjax.trpo, and a line search on a step long enough to backtrack."""
        tx = npgjax.trpo(dist_fn, loss_fn, max_kl=0.02, axis_name=axis)
        ls = npgjax.trust_region_line_search(
            loss_fn, npgjax.mean_kl(dist_fn), max_kl=0.01, shrink=0.5, axis_name=axis)
        kl = npgjax.mean_kl(dist_fn, axis_name=axis)

        def f(p, b, d):
            loss = loss_fn if axis is None else (lambda q, b: jax.lax.pmean(loss_fn(q, b), axis))
            u, s = tx.update(jax.grad(loss)(p, b), tx.init(p), p, batch=b)
            v, t = ls.update(d, ls.init(p), p, batch=b)
            return {
                "trpo": (u, s[2].step_fraction, s[2].kl, s[2].improvement),
                "search": (v, t.kl, t.improvement, t.proposed_kl),
                "mean_kl": kl(jax.tree.map(jnp.add, p, d), p, b),
                "tries": (s[2].tries, t.tries), "search_status": (s[2].status, t.status),
            }
        return f

    g_full = jax.grad(loss_fn)(params, batch)
    big = jax.tree.map(lambda x: -3.0 * x, g_full)  # too long: the search backtracks
    r = jax.jit(search(None))(params, batch, big)
    s = smap(search(ax), (P(), P(ax), P()))(params, batch, big)
    j = jax.jit(search(None))(params, placed[0], big)
    for key in ("trpo", "search", "mean_kl"):
        rel[f"{key}/shard_map"] = _rel(s[key], r[key])
        rel[f"{key}/jit"] = _rel(j[key], r[key])
    for key in ("tries", "search_status"):
        out[key] = [[int(x) for x in res[key]] for res in (r, s, j)]
    out["seconds"]["trpo"] = time.perf_counter() - t0

    # -- bad input
    tx = npgjax.precondition_by_fisher(log_prob_fn, max_kl=0.01, axis_name=ax)
    out["errors"]["unbound_axis"] = _error(
        lambda: tx.update(g_full, tx.init(params), params, batch=batch))
    out["errors"]["unbound_axis_fvp"] = _error(
        lambda: npgjax.fisher_vector_product(log_prob_fn, params, batch, axis_name=ax))
    ls = npgjax.trust_region_line_search(loss_fn, npgjax.mean_kl(dist_fn), max_kl=0.01,
                                         axis_name=ax)
    out["errors"]["unbound_axis_search"] = _error(
        lambda: ls.update(big, ls.init(params), params, batch=batch))

    def local_grad(p, b):  # a per-device gradient, not reduced
        g = jax.grad(loss_fn)(vary(p, ax), b)
        return tx.update(g, tx.init(p), p, batch=b)[0]
    out["errors"]["varying_gradient"] = _error(
        lambda: smap(local_grad, (P(), P(ax)))(params, batch))
    odd = jax.tree.map(lambda x: x[:30], batch)
    out["errors"]["indivisible_helper"] = _error(lambda: check_divisible(odd, DEVICES, "test"))
    out["errors"]["divisible_helper"] = _error(lambda: check_divisible(batch, DEVICES, "test"))
    out["errors"]["indivisible_shard_map"] = _error(
        lambda: smap(steps(ax), (P(), P(ax), P(ax)))(params, odd, mask[:30]))
    out["seconds"]["all"] = time.perf_counter() - t0
    print(json.dumps(out))


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> dict:
    """The subprocess's measurements, once per session (not once per xdist worker)."""
    # Imported here, not at the top: run as a script (the subprocess), this file has no
    # package for the relative import.
    from .conftest import once_per_session

    def build(path: Path) -> None:
        env = dict(os.environ)
        env["XLA_FLAGS"] = (
            env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={DEVICES}"
        ).strip()
        env["JAX_PLATFORMS"] = "cpu"
        env.pop("JAX_ENABLE_X64", None)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        proc = subprocess.run(
            [sys.executable, os.path.abspath(__file__)], env=env, cwd=root,
            capture_output=True, text=True, timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-4000:]
        (path / "measured.json").write_text(proc.stdout.strip().splitlines()[-1])

    path = once_per_session(tmp_path_factory, "sharding-core", build)
    return json.loads((path / "measured.json").read_text())


def test_four_devices(measured):
    assert measured["devices"] == DEVICES
    assert measured["placed_devices"] == DEVICES  # the jit check really ran sharded


@pytest.mark.parametrize("key", ("grad",) + ALL_KINDS)
def test_natural_step_under_shard_map_equals_single_device(measured, key):
    assert measured["rel"][f"shard_map/{key}"] <= RTOL


@pytest.mark.parametrize("key", ("grad",) + JIT_KINDS)
def test_natural_step_under_jit_named_sharding_equals_unsharded(measured, key):
    assert measured["rel"][f"jit/{key}"] <= RTOL


@pytest.mark.parametrize("key", ("grad",) + PMAP_KINDS)
def test_natural_step_under_pmap_equals_single_device(measured, key):
    assert measured["rel"][f"pmap/{key}"] <= RTOL
    assert measured["rel"][f"pmap_devices_agree/{key}"] == 0.0


def test_natural_steps_are_clean(measured):
    assert measured["status"] == {k: 0 for k in ALL_KINDS}
    assert measured["status_sharded"] == measured["status"]


@pytest.mark.parametrize("where", ["shard_map", "jit"])
@pytest.mark.parametrize("key", ["trpo", "search", "mean_kl"])
def test_trpo_and_line_search_equal_single_device(measured, where, key):
    assert measured["rel"][f"{key}/{where}"] <= RTOL


def test_line_search_backtracks_the_same(measured):
    ref, sharded, jitted = measured["tries"]
    assert ref[1] > 1  # the test step is long enough to backtrack
    assert ref == sharded == jitted
    assert measured["search_status"] == [[0, 0]] * 3


@pytest.mark.parametrize("key", ["unbound_axis", "unbound_axis_fvp", "unbound_axis_search"])
def test_unbound_axis_name_is_named(measured, key):
    msg = measured["errors"][key]
    assert msg.startswith("ValueError") and "axis_name='batch'" in msg and "shard_map" in msg


def test_gradient_must_be_global(measured):
    msg = measured["errors"]["varying_gradient"]
    assert msg.startswith("ValueError") and "varies over axis_name" in msg


def test_indivisible_batch(measured):
    errors = measured["errors"]
    assert errors["divisible_helper"] == ""
    assert errors["indivisible_helper"].startswith("ValueError")
    assert "['act']" in errors["indivisible_helper"] and "4 devices" in errors["indivisible_helper"]
    assert errors["indivisible_shard_map"].startswith("ValueError")
    assert "divisible" in errors["indivisible_shard_map"]


if __name__ == "__main__":
    _main()
