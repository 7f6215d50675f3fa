"""Every ```python block of README.md and docs/**/*.md runs, one test per block.

Pages are collected automatically. The blocks of one page run in order and share one
namespace (a block may use names an earlier block defined); each test replays the
earlier blocks of its page when it runs in a fresh worker, so ``pytest -n 2`` works.

HTML comments right before a block (blank lines allowed) steer it; they stay visible in
the page's source:

* ``<!-- skip-test: reason -->`` skips the block. Only for blocks that cannot run here,
  e.g. an excerpt of a notebook that ``make notebooks`` executes in full.
* ``<!-- test-replace: OLD => NEW -->`` runs the block with the text OLD replaced by NEW,
  e.g. a smaller ``total_timesteps`` so that a training example runs in seconds. OLD
  must occur in the block, so a stale marker fails.

A block that imports a package that is not installed (equinox, haiku, ...) is skipped
with a reason, and so is a later block of the same page that then misses a name.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from .conftest import pythonpath

os.environ.setdefault("MPLBACKEND", "Agg")

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md"] + sorted(
    p for p in (ROOT / "docs").rglob("*.md") if "_build" not in p.parts
)
_OPEN = re.compile(r"^(\s*)(`{3,}|~{3,})\s*(python|py)(\s.*)?$")
_MARKER = re.compile(r"^\s*<!--\s*(skip-test|test-replace):\s*(.*?)\s*-->\s*$")


@dataclasses.dataclass(frozen=True)
class Block:
    page: str  # path relative to the repository root
    index: int  # 0-based position among the page's python blocks
    line: int  # 1-based line of the opening fence
    code: str
    skip: str | None
    replacements: tuple[tuple[str, str], ...]

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def _markers(lines: list[str], fence: int) -> tuple[str | None, list[tuple[str, str]]]:
    """The skip reason and the replacements of the comments right above line ``fence``."""
    skip, replacements = None, []
    i = fence - 1
    while i >= 0 and (not lines[i].strip() or _MARKER.match(lines[i])):
        m = _MARKER.match(lines[i])
        if m and m.group(1) == "skip-test":
            skip = m.group(2)
        elif m:
            old, sep, new = m.group(2).partition(" => ")
            assert sep, f"line {i + 1}: test-replace needs 'OLD => NEW'"
            replacements.append((old, new))
        i -= 1
    return skip, replacements[::-1]


def parse(path: pathlib.Path) -> list[Block]:
    """The python blocks of one Markdown page, fences indented or not."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = _OPEN.match(lines[i])
        if m is None:
            i += 1
            continue
        indent, fence, start = len(m.group(1)), m.group(2), i
        body = []
        i += 1
        while i < len(lines) and lines[i].strip() != fence:
            line = lines[i]
            body.append(line[indent:] if not line[:indent].strip() else line.lstrip())
            i += 1
        skip, replacements = _markers(lines, start)
        page = path.relative_to(ROOT).as_posix()
        code = "\n".join(body) + "\n"
        blocks.append(Block(page, len(blocks), start + 1, code, skip, tuple(replacements)))
        i += 1
    return blocks


BLOCKS = [block for page in PAGES for block in parse(page)]
BY_PAGE: dict[str, list[Block]] = {}
for _b in BLOCKS:
    BY_PAGE.setdefault(_b.page, []).append(_b)


def _source(block: Block) -> str:
    code = block.code
    for old, new in block.replacements:
        assert old in code, f"{block.id}: test-replace text {old!r} is not in the block"
        code = code.replace(old, new)
    return code


def _missing_modules(code: str) -> list[str]:
    names = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return sorted(n for n in names if importlib.util.find_spec(n) is None)


@dataclasses.dataclass
class _PageRun:
    """What one worker has run of one page: the namespace and each block's outcome."""

    namespace: dict
    workdir: str
    outcomes: list[str] = dataclasses.field(default_factory=list)  # "ok", "skip: ..."


_RUNS: dict[str, _PageRun] = {}


def _execute(block: Block, run: _PageRun) -> None:
    """Run one block in its page's namespace; record and raise its outcome."""
    if block.skip is not None:
        run.outcomes.append(f"skip: {block.skip}")
        pytest.skip(f"skip-test marker: {block.skip}")
    code = _source(block)
    missing = _missing_modules(code)
    if missing:
        run.outcomes.append(f"skip: needs {', '.join(missing)}")
        pytest.skip(f"needs {', '.join(missing)} (not installed)")
    cwd = os.getcwd()
    os.chdir(run.workdir)  # files a block writes land in a scratch folder
    try:
        exec(compile(code, f"{block.page}:{block.line}", "exec"), run.namespace)
    except NameError as exc:
        skipped = [o for o in run.outcomes if o.startswith("skip")]
        if not skipped:
            run.outcomes.append("failed")
            raise
        run.outcomes.append("skip: an earlier block was skipped")
        pytest.skip(f"{exc}: an earlier block of the page was skipped ({skipped[0]})")
    except BaseException:
        run.outcomes.append("failed")
        raise
    finally:
        os.chdir(cwd)
    run.outcomes.append("ok")


def namespace_after(block: Block) -> dict:
    """Run the page's blocks up to and including ``block``; return the namespace."""
    run = _RUNS.get(block.page)
    if run is None or len(run.outcomes) > block.index:
        # A real module, so that classes defined in a block (dataclasses, pickling) can
        # find their module in sys.modules.
        module = types.ModuleType("_npgjax_docs_" + re.sub(r"\W", "_", block.page))
        sys.modules[module.__name__] = module
        run = _PageRun(module.__dict__, tempfile.mkdtemp(prefix="npgjax-docs-"))
        _RUNS[block.page] = run
    for earlier in BY_PAGE[block.page][len(run.outcomes) : block.index]:
        try:
            _execute(earlier, run)
        except pytest.skip.Exception:
            pass
        except BaseException as exc:
            pytest.fail(f"earlier block {earlier.id} failed: {type(exc).__name__}: {exc}")
    _execute(block, run)
    return run.namespace


@pytest.fixture(scope="module")
def compilation_cache(tmp_path_factory):
    """A persistent compilation cache for this module: several pages train the same
    small configuration, and the second compilation of a program is then a cache hit."""
    try:
        from jax._src import compilation_cache as cc
    except ImportError:  # pragma: no cover - a jax without it: compile every time
        yield
        return
    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
    saved = [getattr(jax.config, n) for n in names]
    jax.config.update(names[0], str(tmp_path_factory.mktemp("jax-cache")))
    jax.config.update(names[1], 1.0)
    cc.reset_cache()
    yield
    for name, value in zip(names, saved, strict=True):
        jax.config.update(name, value)
    cc.reset_cache()


def _corridor_learns(ns: dict) -> None:
    """The own-environment how-to: the deterministic policy walks to the exit."""
    ev = np.asarray(ns["metrics"]["eval_return"])
    assert ev.shape == (4, ns["config"].num_updates)
    np.testing.assert_allclose(ev[:, -1], 0.9, atol=1e-5)  # 6 steps right: 1 - 5 * 0.02
    # Evaluations run every 4 updates and after the last one, NaN in between.
    step = np.arange(1, ev.shape[1] + 1)
    np.testing.assert_array_equal(np.isfinite(ev[0]), (step % 4 == 0) | (step == ev.shape[1]))


# What a block's results must satisfy, checked right after it runs (not run twice).
CHECKS = {"docs/howto/own-environment.md:88": _corridor_learns}


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_block_runs(block: Block, compilation_cache):
    namespace = namespace_after(block)
    if block.id in CHECKS:
        CHECKS[block.id](namespace)


def test_checks_name_real_blocks():
    assert set(CHECKS) <= {b.id for b in BLOCKS}


def test_blocks_are_collected():
    assert len(BLOCKS) >= 15
    assert {"README.md", "docs/howto/neural-network-libraries.md"} <= set(BY_PAGE)


def test_parser_reads_markers_and_indented_fences(tmp_path, monkeypatch):
    page = tmp_path / "page.md"
    page.write_text(
        "text\n\n<!-- skip-test: shell only -->\n\n```python\nx = 1\n```\n\n"
        "<!-- test-replace: 100 => 2 -->\n```python\ny = 100\n```\n\n"
        "??? note\n    ```python\n    if True:\n        z = 3\n    ```\n\n```bash\nls\n```\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    a, b, c = parse(page)
    assert (a.skip, a.code, a.line) == ("shell only", "x = 1\n", 5)
    assert b.replacements == (("100", "2"),) and _source(b) == "y = 2\n" and b.skip is None
    assert c.code == "if True:\n    z = 3\n"


def test_readme_quickstart_has_two_commands():
    text = (ROOT / "README.md").read_text()
    quick = text.split("## Quickstart", 1)[1].split("##", 1)[0]
    bash = re.findall(r"```bash\n(.*?)```", quick, flags=re.S)
    lines = [ln for ln in bash[0].splitlines() if ln.strip()]
    assert [ln.split("#")[0].strip() for ln in lines] == ["make demo", "make test"]


def test_readme_example_respects_max_kl():
    """The README's first block makes a step with KL close to max_kl that lowers the loss."""
    ns = namespace_after(BY_PAGE["README.md"][0])
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


def test_notebook_pages_link_their_source():
    pages = sorted((ROOT / "docs" / "notebooks").glob("*.md"))
    pages = [p for p in pages if p.name != "index.md"]
    assert len(pages) >= 4
    sources = set()
    for page in pages:
        links = re.findall(r"\]\(([^)\s]+\.py)\)", page.read_text())
        assert links, f"{page.name} links no notebook source"
        for link in links:
            sources.add(pathlib.Path(link).name)
    notebooks = {p.name for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.py")}
    assert sources == notebooks


def test_docs_site_loads_no_script_or_style_from_a_cdn():
    yaml = pytest.importorskip("yaml")
    text = (ROOT / "mkdocs.yml").read_text()
    assert "cdn." not in text.lower() and "mathjax" not in text.lower()
    config = yaml.safe_load(text.replace("!!python/name:", ""))
    assets = config.get("extra_javascript", []) + config.get("extra_css", [])
    assert any("katex" in a for a in assets)
    for asset in assets:
        assert "//" not in asset, asset
        assert (ROOT / "docs" / asset).is_file(), asset
    assert config["theme"]["font"] is False  # no font CDN either
    assert "docs/hooks/offline.py" in config["hooks"]
    vendor = ROOT / "docs" / "javascripts" / "vendor" / "katex"
    fonts = set(re.findall(r"url\(([^)]+)\)", (vendor / "katex.min.css").read_text()))
    assert fonts and all((vendor / f).is_file() for f in fonts)
    assert (vendor / "LICENSE").is_file()


def test_offline_hook_flags_remote_scripts(caplog):
    spec = importlib.util.spec_from_file_location("offline", ROOT / "docs/hooks/offline.py")
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    page = type("Page", (), {"file": type("File", (), {"src_uri": "x.md"})()})()
    local = '<script src="../javascripts/katex.js"></script><a href="https://a.b">x</a>'
    remote = '<script src="https://cdn.example.org/mathjax.js"></script>'
    with caplog.at_level("WARNING"):
        assert hook.on_post_page(local, page, {}) == local
        assert not caplog.records
        hook.on_post_page(remote + '<link rel="stylesheet" href="//x.org/a.css">', page, {})
    assert len(caplog.records) == 2 and "cdn.example.org" in caplog.text


def test_getting_started_lists_the_command_lines_options():
    """The `--help` copy in getting-started.md names exactly the options `--help` shows."""
    pytest.importorskip("npgjax.rl")

    def flags(help_text: str) -> set[str]:
        options = help_text.split("\noptions:\n", 1)[1]
        return set(re.findall(r"^\s{2}(?:-h, )?(--[a-z][a-z-]*)", options, re.M))

    text = (ROOT / "docs" / "getting-started.md").read_text()
    block = re.search(r"Its options, from `--help`:\n\n```text\n(.*?)```", text, re.S).group(1)
    env = {**os.environ, "COLUMNS": "80", "PYTHONPATH": pythonpath()}
    proc = subprocess.run(
        [sys.executable, "-m", "npgjax.train", "--help"],
        capture_output=True, text=True, env=env, timeout=120, check=True,
    )
    assert flags(block) == flags(proc.stdout)
