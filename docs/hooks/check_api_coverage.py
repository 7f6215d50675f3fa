"""mkdocs hook: warn (and so fail ``mkdocs build --strict``) when a public name is
missing from the API reference.

Every name in ``npgjax.__all__`` and ``npgjax.rl.__all__`` needs a ``::: npgjax.NAME``
(or ``::: npgjax.rl.NAME``) directive in one of the ``docs/api/*.md`` pages.
"""

from __future__ import annotations

import importlib
import logging
import re
from pathlib import Path

log = logging.getLogger("mkdocs.hooks.check_api_coverage")

PACKAGES = ("npgjax", "npgjax.rl")
_DIRECTIVE = re.compile(r"^:::\s+(\S+)", re.MULTILINE)


def on_pre_build(config, **kwargs) -> None:
    api_dir = Path(config["docs_dir"]) / "api"
    documented: set[str] = set()
    for page in sorted(api_dir.glob("*.md")):
        documented |= set(_DIRECTIVE.findall(page.read_text(encoding="utf-8")))
    for pkg_name in PACKAGES:
        try:
            pkg = importlib.import_module(pkg_name)
        except ImportError as exc:  # pragma: no cover
            log.warning("cannot import %s to check the API reference: %s", pkg_name, exc)
            continue
        for name in getattr(pkg, "__all__", ()):
            if f"{pkg_name}.{name}" not in documented:
                log.warning(
                    "%s.%s is public (in __all__) but no docs/api/*.md page has '::: %s.%s'",
                    pkg_name,
                    name,
                    pkg_name,
                    name,
                )
