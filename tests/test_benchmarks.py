"""Smoke tests of the benchmark scripts' npgjax workers, on tiny budgets.

``benchmarks/compare_sb3.py`` was once broken for three sessions (its worker called the
compiled chunk without the chunk's first update index) because nothing ran it: these
tests call its npgjax workers in-process with the zoo settings shrunk, so an interface
change in the trainer or the command line's compile shows up here. sb3 itself is an
optional extra and is not run.
"""

import importlib.util
import json
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The zoo config shrunk: 2 envs x 16 steps, 4 updates, small critic and CG.
TINY = {"num_steps": 16, "vf_minibatch": 16, "vf_epochs": 2, "cg_iters": 2, "hidden": [8]}


@pytest.fixture(scope="module")
def compare_sb3():
    spec = importlib.util.spec_from_file_location(
        "compare_sb3", ROOT / "benchmarks" / "compare_sb3.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compare_sb3_one_seed_worker(compare_sb3):
    spec = {"t0": time.time(), "seed": 3, "total_timesteps": 128, "chunk_updates": 2,
            "target": 475.0, "cache_label": "cold", "overrides": TINY}
    r = compare_sb3.worker_npgjax(spec)
    assert r["chunk_updates"] == 2 and r["chunks"] == 2
    assert r["env_steps"] == 128 and len(r["returns"]) == 4
    assert r["steps_per_s"] > 0 and r["ready_s"] >= r["import_s"] >= 0
    assert r["cpu_at_ready_s"] > 0
    assert r["solved"] is None  # 128 steps cannot reach 475


def test_compare_sb3_warm_worker_reads_the_programs_back(compare_sb3, tmp_path):
    """In fresh processes, as the benchmark runs them: the second run with the same cache
    reads both programs back without the trainer, with the same returns."""
    spec = {"seed": 3, "total_timesteps": 128, "chunk_updates": 2, "target": 475.0,
            "overrides": TINY, "cache_dir": str(tmp_path)}
    cold = compare_sb3.run_worker("npgjax", dict(spec, cache_label="cold"))
    warm = compare_sb3.run_worker("npgjax", dict(spec, cache_label="warm"))
    assert "error" not in cold and "error" not in warm, (cold, warm)
    assert (cold["export"], warm["export"]) == ("saved", "warm")
    assert warm["returns"] == cold["returns"] and warm["chunks"] == cold["chunks"] == 2


def test_compare_sb3_vmapped_worker(compare_sb3):
    spec = {"t0": time.time(), "seeds": [0, 1], "total_timesteps": 64, "target": 475.0,
            "overrides": TINY}
    r = compare_sb3.worker_npgjax_vmap(spec)
    assert r["env_steps_per_seed"] == 64 and r["env_steps_total"] == 128
    assert len(r["final_returns"]) == 2 and r["num_solved"] == 0
    assert r["steps_per_s"] > 0 and r["compile_s"] > 0


def test_compare_sb3_pooled_ratio_interval(compare_sb3):
    """The bootstrap interval brackets the pooled ratio, is a point for identical seeds,
    is deterministic, and needs 4 seeds."""
    assert compare_sb3.interval([(20.0, 2.0)] * 3) is None
    assert compare_sb3.interval([(20.0, 2.0)] * 5) == (10.0, 10.0)
    pairs = [(17.0, 2.2), (18.0, 1.6), (26.0, 2.0), (12.0, 2.0), (28.0, 1.9), (22.0, 2.4)]
    lo, hi = compare_sb3.interval(pairs)
    pooled = sum(a for a, _ in pairs) / sum(b for _, b in pairs)
    assert min(a / b for a, b in pairs) < lo < pooled < hi < max(a / b for a, b in pairs)
    assert compare_sb3.interval(pairs) == (lo, hi)
    runs = {s: {"sb3": {"solved": {"seconds_since_start": a}, "steps_per_s": 3e3,
                        "stopped_at_time_limit": False},
                "warm": {"solved": {"seconds_since_start": b}, "steps_per_s": 7e4}}
            for s, (a, b) in enumerate(pairs)}
    out = compare_sb3.summarize(runs)
    assert out["interval"]["warm_time_ratio"] == (lo, hi)
    assert out["pooled"]["warm_time_ratio"] == pytest.approx(pooled)
    assert out["interval"]["warm_sps_ratio"] == pytest.approx((70 / 3, 70 / 3))
    assert out["interval"]["cold_time_ratio"] is None


def test_compare_sb3_cold_budget(compare_sb3, capsys):
    """The cold target's budget: the mean sb3 solve / 3 over the seeds both solved, and the
    CPU used by ready spread over the cores as a floor; no floor without the CPU figure."""
    def run(sb3, ready, solve, cpu):
        return {"sb3": {"solved": {"seconds_since_start": sb3}, "steps_per_s": 3e3,
                        "stopped_at_time_limit": False},
                "cold": {"solved": {"seconds_since_start": solve}, "ready_s": ready,
                         "cpu_at_ready_s": cpu, "steps_per_s": 6e4}}
    unsolved = run(20.0, 8.0, 9.0, 12.0)
    unsolved["cold"]["solved"] = None
    runs = {0: run(21.0, 8.0, 9.0, 12.0), 1: run(24.0, 7.0, 8.0, 13.0), 2: unsolved}
    b = compare_sb3.cold_budget(runs, 2)
    assert b["seeds"] == 2 and b["allowed_s"] == pytest.approx(22.5 / 3)
    assert (b["ready_s"], b["ready_to_solve_s"]) == pytest.approx((7.5, 1.0))
    assert b["cpu_floor_s"] == pytest.approx(6.25)
    compare_sb3.print_cold_budget(b)
    assert "at least 6.25 s on 2 cores" in capsys.readouterr().out
    del runs[1]["cold"]["cpu_at_ready_s"]
    assert compare_sb3.cold_budget(runs, 2)["cpu_floor_s"] is None
    assert compare_sb3.cold_budget({2: unsolved}, 2) is None


def test_compare_sb3_pools_saved_runs(compare_sb3, tmp_path, capsys):
    def saved(seeds):
        runs = {str(s): {"sb3": {"solved": {"seconds_since_start": 20.0 + s,
                                            "env_steps": 50_000},
                                 "steps_per_s": 3e3, "stopped_at_time_limit": False},
                         "warm": {"solved": {"seconds_since_start": 2.0, "env_steps": 40_960},
                                  "steps_per_s": 6e4}}
                for s in seeds}
        return json.dumps({"machine": {"cpu_model": "test"}, "modes": {"tasks": {"runs": runs}}})

    (tmp_path / "a.json").write_text(saved([0, 1]))
    (tmp_path / "b.json").write_text(saved([2, 3]))
    out = compare_sb3.main(["--pool", str(tmp_path / "a.json"), str(tmp_path / "b.json")])
    assert out["tasks"]["pooled"]["warm_time_ratio"] == pytest.approx(21.5 / 2.0)
    assert out["tasks"]["interval"]["warm_time_ratio"] is not None  # 4 seeds
    assert "95% interval" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="seed 0 of mode tasks is in two files"):
        compare_sb3.main(["--pool", str(tmp_path / "a.json"), str(tmp_path / "a.json")])


def test_suite_time_reads_pytest_summaries():
    """benchmarks/suite_time.py finds pytest's summary in -q and in full output."""
    spec = importlib.util.spec_from_file_location(
        "suite_time", ROOT / "benchmarks" / "suite_time.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    quiet = "....\n[gw0] ...\n425 passed, 8 skipped in 391.23s (0:06:31)\n"
    full = "===== 3 passed, 1 warning in 2.50s =====\n"
    assert module.SUMMARY.search(quiet).groups() == ("425 passed, 8 skipped", "391.23")
    assert module.SUMMARY.search(full).groups() == ("3 passed, 1 warning", "2.50")
    assert module.SUMMARY.search("1 failed, 2 passed in 3.0s") is None


def test_compile_time_cli_worker():
    """benchmarks/compile_time.py's ``cli`` variant compiles and runs as the command line
    does (a fresh process, a run shrunk to 4 updates of 2 seeds)."""
    spec = importlib.util.spec_from_file_location(
        "compile_time", ROOT / "benchmarks" / "compile_time.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    tiny = {"total_timesteps": 128, "num_envs": 2, "num_steps": 16, "cg_iters": 2,
            "vf_epochs": 1, "hidden": [8], "eval_every": 2}
    r = module.run("cli", 2, ROOT, tiny)
    assert r["chunk"] == 1 and r["train_at_475"] == 0  # 4 updates: one per chunk
    assert r["trace_s"] > 0 and r["xla_s"] >= 0 and r["run_s"] > 0
    assert Path(r["npgjax"]).is_relative_to(ROOT)
