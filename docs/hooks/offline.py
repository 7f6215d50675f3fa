"""mkdocs hook: warn (and so fail ``mkdocs build --strict``) when a built page loads a
script or a stylesheet from another host: the site, maths included, must work offline.
"""

from __future__ import annotations

import logging
import re

log = logging.getLogger("mkdocs.hooks.offline")

_REMOTE = re.compile(
    r"""<(?:script[^>]*\ssrc|link[^>]*\shref)\s*=\s*["']((?:https?:)?//[^"']+)["']""", re.I
)


def on_post_page(output: str, page, config) -> str:
    for url in sorted(set(_REMOTE.findall(output))):
        log.warning("%s loads %s from another host; serve it from the site", page.file.src_uri, url)
    return output
