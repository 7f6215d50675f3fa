"""Execute every notebook in notebooks/ and report its wall time.

The notebooks are kept as jupytext percent-format ``.py`` files, the source of truth.
This script pairs each one to an ``.ipynb`` in a scratch directory (never in
notebooks/), runs it with nbclient from the repository root (so that the figures land
in ``docs/figures/``), and exits non-zero if any notebook raises.

Usage (from anywhere)::

    .venv/bin/python docs/execute_notebooks.py                  # all notebooks
    .venv/bin/python docs/execute_notebooks.py 01 03            # names containing 01 or 03
    NPGJAX_NOTEBOOK_QUICK=1 .venv/bin/python docs/execute_notebooks.py   # smoke budgets
    .venv/bin/python docs/execute_notebooks.py --keep docs/_build/notebooks

``--keep DIR`` writes the executed ``.ipynb`` files (with outputs) to ``DIR``; by default
they go to a temporary directory that is deleted afterwards. The default budgets keep
each notebook under two minutes on a two-core CPU; ``NPGJAX_NOTEBOOK_QUICK=1`` makes
them smaller still (the notebooks read it).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
FIGURES = ROOT / "docs" / "figures"
CELL_TIMEOUT_S = 300
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def execute(path: Path, out_dir: Path, kernel: str | None) -> tuple[float, str | None]:
    """Convert one percent-format script to a notebook and run it.

    Returns:
      ``(wall time in seconds, error message or None)``.
    """
    import jupytext
    import nbformat
    from nbclient import NotebookClient

    nb = jupytext.read(path, fmt="py:percent")
    nb.metadata.pop("jupytext", None)
    client_kwargs = {"timeout": CELL_TIMEOUT_S, "resources": {"metadata": {"path": str(ROOT)}}}
    if kernel:
        client_kwargs["kernel_name"] = kernel
    client = NotebookClient(nb, **client_kwargs)
    start = time.perf_counter()
    error = None
    try:
        client.execute()
    except Exception as exc:  # CellExecutionError, DeadKernelError, timeouts...
        error = _ANSI.sub("", f"{type(exc).__name__}: {exc}")
    elapsed = time.perf_counter() - start
    nbformat.write(nb, out_dir / f"{path.stem}.ipynb")
    return elapsed, error


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("patterns", nargs="*", help="run only notebooks whose name contains one")
    parser.add_argument("--keep", type=Path, help="directory for the executed .ipynb files")
    parser.add_argument("--kernel", default=None, help="Jupyter kernel name (default: python3)")
    args = parser.parse_args(argv)

    paths = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.py"))
    if args.patterns:
        paths = [p for p in paths if any(pat in p.name for pat in args.patterns)]
    if not paths:
        print("no notebooks matched", file=sys.stderr)
        return 1

    FIGURES.mkdir(parents=True, exist_ok=True)
    # The kernel inherits the environment: make the package importable from a checkout,
    # keep JAX on the CPU's cores quiet, and pass the quick flag through.
    os.environ.setdefault("PYTHONPATH", str(ROOT))
    os.environ.setdefault("MPLBACKEND", "Agg")
    quick = os.environ.get("NPGJAX_NOTEBOOK_QUICK", "0") not in ("", "0")

    with tempfile.TemporaryDirectory(prefix="npgjax-notebooks-") as tmp:
        out_dir = args.keep if args.keep else Path(tmp)
        out_dir.mkdir(parents=True, exist_ok=True)
        results: list[tuple[str, float, str | None]] = []
        for path in paths:
            print(f"running {path.relative_to(ROOT)}{' (quick)' if quick else ''} ...", flush=True)
            elapsed, error = execute(path, out_dir, args.kernel)
            results.append((path.name, elapsed, error))
            status = "ok" if error is None else "FAILED"
            print(f"  {status:6s} {elapsed:7.1f} s  {path.name}", flush=True)
            if error is not None:
                print(error, file=sys.stderr, flush=True)

    print("\nnotebook                                       wall time")
    for name, elapsed, error in results:
        print(f"{name:45s} {elapsed:7.1f} s  {'FAILED' if error else 'ok'}")
    failed = [name for name, _, error in results if error is not None]
    if failed:
        print(f"\n{len(failed)} notebook(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
