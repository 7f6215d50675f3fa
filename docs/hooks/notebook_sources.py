"""mkdocs hook: publish the notebooks' sources, ``notebooks/NN_*.py``, in the site.

Each becomes ``notebooks/src/NN_*.py`` in the site, so that a notebook page links its
source with ``[...](src/NN_name.py)`` and ``mkdocs build --strict`` checks the link.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


def on_files(files, config, **kwargs):
    for path in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.py")):
        files.append(File.generated(config, f"notebooks/src/{path.name}", abs_src_path=str(path)))
    return files
