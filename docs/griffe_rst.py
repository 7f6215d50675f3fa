"""Griffe extension: render the Sphinx-flavoured bits of npgjax's docstrings in Markdown.

npgjax's docstrings are Google style (``Args:``, ``Returns:``, ``Examples:``), which
mkdocstrings parses natively, but they also use a few reStructuredText constructs so
that they read well in ``help()`` and in Sphinx:

* ``.. math::`` blocks and ``:math:`...``` roles become MathJax display and inline maths
  (``$$ ... $$`` and ``\\( ... \\)``, rendered by ``pymdownx.arithmatex``);
* ``:func:``, ``:class:``, ``:mod:``, ``:data:``, ``:meth:``, ``:attr:`` and ``:obj:``
  roles become cross-references when they name a documented npgjax object, and inline
  code otherwise (e.g. ``optax.GradientTransformationExtraArgs``);
* ```text <url>`_`` hyperlinks become Markdown links, and a paragraph ending in ``::``
  (RST's literal-block marker) ends in a single colon.

The docstrings in the source are left untouched: this runs on Griffe's copy while
mkdocs builds the site. It is loaded through the ``extensions`` option of the
mkdocstrings Python handler in ``mkdocs.yml``.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(func|class|meth|mod|data|attr|obj|exc|const):`([^`]+)`")
_MATH_ROLE = re.compile(r":math:`([^`]+)`")
_LINK = re.compile(r"`([^`<]+?)\s*<(https?://[^>]+)>`__?", re.DOTALL)
# "Example::" introduces a literal block in RST; the indented block is already a
# Markdown code block, so keep a single colon.
_LITERAL_MARKER = re.compile(r"^(?!\s*\.\. )(.*?)::[ \t]*$", re.MULTILINE)
_BULLET = re.compile(r"^(\s*)[*-] ")
_MATH_DIRECTIVE = re.compile(r"^(?P<indent>\s*)\.\. math::\s*(?P<arg>.*)$")


def _documented_names() -> dict[str, str]:
    """Map every documented path (public and canonical) to the public identifier."""
    names: dict[str, str] = {}
    for pkg_name in ("npgjax", "npgjax.rl"):
        pkg = importlib.import_module(pkg_name)
        names[pkg_name] = pkg_name
        for name in getattr(pkg, "__all__", []):
            public = f"{pkg_name}.{name}"
            names[public] = public
            obj = getattr(pkg, name)
            module = getattr(obj, "__module__", None)
            if module and module.startswith("npgjax") and hasattr(obj, "__qualname__"):
                names[f"{module}.{obj.__qualname__}"] = public
    for mod in (
        "distributions",
        "estimators",
        "fisher",
        "logprob",
        "scores",
        "solvers",
        "steps",
        "transforms",
    ):
        names[f"npgjax.{mod}"] = f"npgjax.{mod}"
    for mod in ("configs", "networks", "trainer"):
        names[f"npgjax.rl.{mod}"] = f"npgjax.rl.{mod}"
    return names


_NAMES: dict[str, str] | None = None


def _resolve(target: str, module_path: str) -> str | None:
    global _NAMES
    if _NAMES is None:
        _NAMES = _documented_names()
    target = target.lstrip("~.")
    candidates = [target]
    if "." not in target:
        candidates += [f"{module_path}.{target}", f"npgjax.{target}", f"npgjax.rl.{target}"]
    for cand in candidates:
        if cand in _NAMES:
            return _NAMES[cand]
    return None


def _role_to_markdown(match: re.Match[str], module_path: str) -> str:
    text = match.group(2).strip()
    explicit = re.match(r"^(.*?)\s*<([^>]+)>$", text)
    if explicit:
        label, target = explicit.group(1), explicit.group(2)
    else:
        target = text
        label = text.lstrip("~")
        if text.startswith("~"):
            label = label.rsplit(".", 1)[-1]
    if match.group(1) in ("func", "meth"):
        label = label if label.endswith(")") else f"{label}()"
    ident = _resolve(target, module_path)
    if ident is None:
        return f"`{label}`"
    return f"[`{label}`][{ident}]"


def _wrap_display(lines: list[str]) -> str:
    body = "\n".join(line.strip() for line in lines).strip()
    # Sphinx wraps a multi-line equation in an alignment environment; do the same when
    # there is a top-level line break or alignment mark.
    top = re.sub(r"\\begin\{(\w+)\}.*?\\end\{\1\}", "", body, flags=re.DOTALL)
    if "\\\\" in top or "&" in top:
        body = f"\\begin{{aligned}}\n{body}\n\\end{{aligned}}"
    return body


def _convert_math_directives(text: str) -> str:
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        match = _MATH_DIRECTIVE.match(lines[i])
        if not match:
            out.append(lines[i])
            i += 1
            continue
        indent = match.group("indent")
        content = [match.group("arg")] if match.group("arg").strip() else []
        i += 1
        # The directive's content: following lines indented deeper than the directive
        # (blank lines included while the block goes on).
        while i < len(lines):
            line = lines[i]
            if line.strip() == "":
                nxt = next((ln for ln in lines[i + 1 :] if ln.strip()), None)
                deeper = nxt is not None and len(nxt) - len(nxt.lstrip()) > len(indent)
                if content and deeper:
                    content.append("")
                    i += 1
                    continue
                if not content:
                    i += 1
                    continue
                break
            if len(line) - len(line.lstrip()) <= len(indent):
                break
            content.append(line)
            i += 1
        if out and out[-1].strip():
            out.append("")
        out.append(f"{indent}$$")
        out.extend(f"{indent}{ln}" if ln else "" for ln in _wrap_display(content).splitlines())
        out.append(f"{indent}$$")
        if i < len(lines) and lines[i].strip():
            out.append("")
    return "\n".join(out)


def _indent_of(line: str) -> int:
    return len(line) - len(line.lstrip())


def _reindent_bullets(text: str) -> str:
    """Give RST bullet items (2-space continuation) Markdown's 4-space continuation."""
    out: list[str] = []
    bullet_indent: int | None = None
    for line in text.splitlines():
        match = _BULLET.match(line)
        if match:
            bullet_indent = len(match.group(1))
            out.append(line)
            continue
        if bullet_indent is not None and line.strip():
            if _indent_of(line) <= bullet_indent:
                bullet_indent = None
            elif _indent_of(line) >= bullet_indent + 2:
                line = "  " + line
        out.append(line)
    return "\n".join(out)


def rst_to_markdown(text: str, module_path: str = "npgjax") -> str:
    """Convert the reStructuredText constructs npgjax's docstrings use to Markdown."""
    text = _reindent_bullets(text)
    text = _convert_math_directives(text)
    text = _LITERAL_MARKER.sub(lambda m: m.group(1) + (":" if m.group(1).strip() else ""), text)
    text = _MATH_ROLE.sub(lambda m: f"\\({m.group(1)}\\)", text)
    text = _ROLE.sub(lambda m: _role_to_markdown(m, module_path), text)
    text = _LINK.sub(lambda m: f"[{' '.join(m.group(1).split())}]({m.group(2)})", text)
    return text


class RstToMarkdown(griffe.Extension):
    """Rewrite each docstring once the object tree is complete."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is None or not obj.path.startswith("npgjax"):
            return
        module_path = obj.module.path if not obj.is_module else obj.path
        obj.docstring.value = rst_to_markdown(obj.docstring.value, module_path)
