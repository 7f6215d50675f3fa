"""Start-up cost of ``import jax`` and of the command line, against another ml_dtypes.

Why this exists: ml_dtypes 0.7.0 (which jax 0.10 accepts) takes about half a second to
import on a 2-core AMD EPYC, against about 5 ms for 0.5.x and 0.6.0: its extension
registers its ufunc loops one by one through numpy's ``PyUFunc_AddLoop``, which compares
each new loop with every loop already there (a ``perf`` profile of the import is
mostly ``PyObject_RichCompare`` on tuples). ``import jax`` imports ml_dtypes, so every
process that uses jax pays it, and the command line's cold and warm starts with it. The
``rl`` extra therefore caps ``ml_dtypes<0.7`` (pyproject.toml). Delete the cap when this
script, run with ``--other`` set to a newer ml_dtypes, shows no difference.

Each repeat runs, in fresh processes and alternating, ``import jax`` and ``import
npgjax.train`` with the ml_dtypes installed in this environment and with ``--other``
(default 0.7.0), installed without dependencies into a cache folder
(``~/.cache/npgjax/ml_dtypes-<version>``, pip needs the package index once) and put
first on ``PYTHONPATH``. It prints the median seconds of each import and of ml_dtypes'
own import (``-X importtime``), and the machine.

With ``--gc`` it measures instead what ``npgjax/_gc.py``'s pauses of Python's cyclic
garbage collector save: ``import npgjax.train`` with npgjax as shipped, with the pauses
replaced by no-ops (a stand-in ``npgjax._gc`` put in ``sys.modules`` by the probe), and
with the collector off for the whole process, in fresh processes, alternating. Delete the
pauses when the first two show no difference.

Run: ``.venv/bin/python benchmarks/startup.py`` (about 30 s); ``--gc`` (about 40 s).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_model, load_average

ROOT = Path(__file__).resolve().parents[1]
PROBE = ("import time; t = time.perf_counter(); import {module}; import ml_dtypes; "
         "print(ml_dtypes.__version__, time.perf_counter() - t)")


def other_site(version: str) -> Path:
    """A folder holding ml_dtypes ``version`` alone, installed on first use."""
    site = Path.home() / ".cache" / "npgjax" / f"ml_dtypes-{version}"
    if not (site / "ml_dtypes").is_dir():
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                        "--target", str(site), f"ml_dtypes=={version}"], check=True)
    return site


def probe(module: str, site: Path | None) -> dict:
    """Import ``module`` in a fresh process: ml_dtypes' version, seconds, ml_dtypes' share."""
    env = dict(os.environ)
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", PROBE.format(module=module)],
                         env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    version, seconds = out.stdout.split()
    own = re.search(r"\|\s*(\d+) \|\s*ml_dtypes\s*$", out.stderr, re.MULTILINE)
    return {"ml_dtypes": version, "seconds": float(seconds),
            "ml_dtypes_seconds": int(own.group(1)) / 1e6 if own else float("nan")}


GC_PROBES = {
    "pauses (as shipped)": "",
    "no pauses": ("import sys, types, contextlib; m = types.ModuleType('npgjax._gc'); "
                  "m.paused_gc = contextlib.nullcontext; sys.modules['npgjax._gc'] = m; "),
    "collector off": "import gc; gc.disable(); ",
}
GC_PROBE = ("import time; t = time.perf_counter(); import npgjax.train, npgjax.rl._gymnax as g; "
            "g.import_gymnax(); "
            "print(time.perf_counter() - t)")


def gc_table(repeat: int) -> list[dict]:
    """Import seconds of ``npgjax.train`` (with the RL layer and gymnax) per GC variant."""
    rows = []
    for _ in range(repeat):
        for name, setup in GC_PROBES.items():
            out = subprocess.run([sys.executable, "-c", setup + GC_PROBE], cwd=ROOT,
                                 capture_output=True, text=True, check=True)
            rows.append({"variant": name, "seconds": float(out.stdout.split()[-1])})
    print("| import npgjax.train, npgjax.rl, gymnax (as npgjax does) | seconds (median) | runs |")
    print("| --- | --- | --- |")
    for name in GC_PROBES:
        mine = [r["seconds"] for r in rows if r["variant"] == name]
        print(f"| {name} | {statistics.median(mine):.3f} | {len(mine)} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--other", default="0.7.0", help="ml_dtypes version to compare with")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also save the raw results here")
    parser.add_argument("--gc", action="store_true",
                        help="measure npgjax's garbage-collector pauses instead")
    a = parser.parse_args()
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs, load {load_average()}")
    if a.gc:
        rows = gc_table(a.repeat * 2)
        print(f"load at the end: {load_average()}")
        if a.json:
            a.json.write_text(json.dumps({"cpu": cpu_model(), "rows": rows}, indent=1))
        return
    site = other_site(a.other)
    rows = []
    for _ in range(a.repeat):
        for module in ("jax", "npgjax.train"):
            for side in (None, site):
                rows.append(dict(probe(module, side), module=module))
    print("| module | ml_dtypes | import s (median) | of which ml_dtypes s | runs |")
    print("| --- | --- | --- | --- | --- |")
    for module in ("jax", "npgjax.train"):
        for version in sorted({r["ml_dtypes"] for r in rows}):
            mine = [r for r in rows if r["module"] == module and r["ml_dtypes"] == version]
            print(f"| `import {module}` | {version} | "
                  f"{statistics.median(r['seconds'] for r in mine):.3f} | "
                  f"{statistics.median(r['ml_dtypes_seconds'] for r in mine):.3f} | {len(mine)} |")
    print(f"load at the end: {load_average()}")
    if a.json:
        a.json.write_text(json.dumps({"cpu": cpu_model(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
