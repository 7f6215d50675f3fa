"""How long ``make test`` takes on this machine: the figure in README's Development section.

Clones the current commit into a temporary folder (a fresh clone, as CI gets one), then
runs ``make venv`` (timed apart: pip's downloads depend on the network and its cache) and
``make test`` (ruff and the whole pytest suite on 2 workers), and prints the wall times,
pytest's own summary line, the CPU model, its clock, the core count and the load average
before and after (other jobs on a shared machine slow the suite).

    .venv/bin/python benchmarks/suite_time.py              # about 8 min on 2 quiet cores
    .venv/bin/python benchmarks/suite_time.py --repeat 2   # the suite twice, same clone
    .venv/bin/python benchmarks/suite_time.py --json out.json

Needs git and make; the clone is deleted afterwards unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_mhz, cpu_model, load_average

ROOT = Path(__file__).resolve().parent.parent
SUMMARY = re.compile(r"^=*\s*(\d+ passed.*?) in ([\d.]+)s", re.M)


def timed(cmd: list[str], cwd: Path) -> tuple[float, int, str]:
    """Wall seconds, exit status and the combined output of ``cmd``."""
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    return time.perf_counter() - t, proc.returncode, proc.stdout + proc.stderr


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1, help="runs of make test (default 1)")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary clone")
    args = parser.parse_args(argv)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                            capture_output=True, check=True).stdout.strip()
    print(f"commit {commit}; CPU {cpu_model()} ({cpu_mhz() or '?'} MHz), "
          f"{os.cpu_count()} cores; load average {load_average()}")
    tmp = Path(tempfile.mkdtemp(prefix="npgjax-suite-time-"))
    clone = tmp / "npgjax"
    result: dict = {"commit": commit, "cpu_model": cpu_model(), "cpu_mhz": cpu_mhz(),
                    "cpu_count": os.cpu_count(), "runs": []}
    try:
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        seconds, code, out = timed(["make", "venv"], clone)
        result["make_venv_s"] = round(seconds, 1)
        print(f"make venv   {seconds:6.1f} s" + ("" if code == 0 else f"  FAILED ({code})"))
        if code != 0:
            print(out[-3000:])
            return code
        for _ in range(args.repeat):
            load = load_average()
            seconds, code, out = timed(["make", "test"], clone)
            found = SUMMARY.search(out)
            run = {"make_test_s": round(seconds, 1), "exit_status": code,
                   "pytest_summary": found.group(1) if found else None,
                   "pytest_s": float(found.group(2)) if found else None,
                   "load_before": load, "load_after": load_average()}
            result["runs"].append(run)
            print(f"make test   {seconds:6.1f} s ({seconds / 60:.1f} min), exit {code}; "
                  f"pytest: {run['pytest_summary']} in {run['pytest_s']} s; "
                  f"load {load} -> {run['load_after']}")
            if code != 0:
                print(out[-3000:])
    finally:
        if args.keep:
            print(f"clone kept in {clone}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return max((r["exit_status"] for r in result["runs"]), default=0)


if __name__ == "__main__":
    sys.exit(main())
