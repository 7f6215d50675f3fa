"""Packaging: the core installs and imports without the RL layer's dependencies.

Building a wheel is too slow for the suite; these tests read ``pyproject.toml`` and the
sources instead, and import the package in a subprocess where gymnax, flax and
matplotlib cannot be imported (as after ``pip install npgjax`` without extras).
"""

from __future__ import annotations

import ast
import importlib
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

import npgjax

from .conftest import pythonpath

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = pathlib.Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
EXTRAS = PROJECT["optional-dependencies"]
OPTIONAL = ("gymnax", "flax", "matplotlib", "seaborn", "gymnasium", "tqdm")
CORE = {"jax", "jaxlib", "optax", "chex"}


def _name(requirement: str) -> str:
    """The distribution name of a PEP 508 requirement string."""
    return re.match(r"[A-Za-z0-9_.\-]+", requirement).group(0).lower()


def _extra(name: str, seen: frozenset = frozenset()) -> set[str]:
    """The distribution names an extra pulls in, following ``npgjax[...]`` references."""
    names = set()
    for req in EXTRAS[name]:
        inner = re.fullmatch(r"npgjax\[([\w,\s-]+)\]", req.replace(" ", ""))
        if inner is None:
            names.add(_name(req))
            continue
        for sub in inner.group(1).split(","):
            if sub not in seen:
                names |= _extra(sub, seen | {name})
    return names


def test_core_dependencies_are_jax_optax_chex_only():
    names = {_name(r) for r in PROJECT["dependencies"]}
    assert names == CORE
    assert not names & set(OPTIONAL)


def test_rl_extra_carries_gymnax_and_its_jax_cap():
    rl = EXTRAS["rl"]
    assert {"gymnax", "flax", "gymnasium", "six"} <= {_name(r) for r in rl}
    # gymnax 1.0.1 supports jax < 0.12: the cap lives with it, not in the core.
    assert any(_name(r) == "jax" and "<0.12" in r.replace(" ", "") for r in rl)
    assert not any("<" in r for r in PROJECT["dependencies"])


def test_rl_extra_caps_ml_dtypes_and_the_environment_follows():
    """ml_dtypes 0.7.0 doubles ``import jax`` (benchmarks/startup.py): capped with the RL
    layer; delete this test with the cap once startup.py shows a newer release is fast."""
    from importlib.metadata import version

    cap = [r.replace(" ", "") for r in EXTRAS["rl"] if _name(r) == "ml_dtypes"]
    assert cap == ["ml_dtypes>=0.5,<0.7"]
    major, minor = (int(x) for x in version("ml_dtypes").split(".")[:2])
    assert (0, 5) <= (major, minor) < (0, 7)


@pytest.mark.parametrize("extra", ["dev", "docs"])
def test_dev_and_docs_extras_install_everything_the_demo_and_tests_need(extra):
    names = _extra(extra)
    assert {"gymnax", "flax", "matplotlib", "tqdm", "flatbuffers"} <= names
    assert {"dev": "pytest", "docs": "mkdocs"}[extra] in names


def test_every_extra_the_code_and_docs_name_exists():
    files = [ROOT / "README.md", *(ROOT / "npgjax").rglob("*.py"), *(ROOT / "docs").rglob("*.md")]
    named = {
        (m, p.relative_to(ROOT).as_posix())
        for p in files
        for m in re.findall(r"npgjax\[([a-z0-9_-]+)\]", p.read_text(encoding="utf-8"))
    }
    assert {m for m, _ in named} >= {"rl"}
    assert sorted((m, p) for m, p in named if m not in EXTRAS) == []


def _third_party_imports(path: pathlib.Path) -> set[str]:
    """Top-level names of every import in a module (module level and in functions)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"npgjax"}


def test_core_modules_import_only_core_dependencies():
    core = [p for p in sorted((ROOT / "npgjax").glob("*.py")) if p.name != "train.py"]
    assert len(core) >= 8
    # numpy comes with jax (a hard dependency of jax and jaxlib).
    allowed = CORE | {"numpy"}
    offenders = {p.name: sorted(_third_party_imports(p) - allowed) for p in core}
    assert {k: v for k, v in offenders.items() if v} == {}


_BLOCKER = """
import importlib.abc, sys
BLOCKED = {blocked!r}

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked)", name=name)
        return None

sys.meta_path.insert(0, Block())
# As if not installed: importlib.util.find_spec(name) is None, and importing fails.
sys.modules.update(dict.fromkeys(BLOCKED))
"""

_CORE_UPDATE = """
import json
import jax, jax.numpy as jnp, optax
import npgjax

params = {"w": jnp.zeros((3, 2))}
obs = jax.random.normal(jax.random.PRNGKey(0), (16, 3))
batch = {"obs": obs, "actions": (obs[:, 0] > 0).astype(jnp.int32)}

def log_prob_fn(p, b):
    return npgjax.Categorical(b["obs"] @ p["w"]).log_prob(b["actions"])

loss = lambda p: -jnp.mean(log_prob_fn(p, batch))
tx = npgjax.npg(log_prob_fn, max_kl=0.01)
updates, _ = tx.update(jax.grad(loss)(params), tx.init(params), params, batch=batch)
new = optax.apply_updates(params, updates)
print(json.dumps({
    "loss_before": float(loss(params)),
    "loss_after": float(loss(new)),
    "finite": bool(jnp.all(jnp.isfinite(new["w"]))),
    "loaded": sorted(
        m for m, mod in sys.modules.items()
        if mod is not None and (m.split(".")[0] in BLOCKED or m == "npgjax.rl")
    ),
}))
"""


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", _BLOCKER.format(blocked=set(OPTIONAL)) + code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": pythonpath()},
    )


def test_blocker_hides_the_optional_packages():
    code = "import importlib.util\nassert importlib.util.find_spec('flax') is None\nimport flax"
    proc = _run(code)
    assert proc.returncode != 0 and "ModuleNotFoundError" in proc.stderr, proc.stderr[-2000:]
    assert "AssertionError" not in proc.stderr


def test_core_imports_and_steps_without_optional_dependencies():
    proc = _run(_CORE_UPDATE)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["loaded"] == []
    assert out["finite"]
    assert out["loss_after"] < out["loss_before"]


def test_rl_layer_without_its_dependencies_says_what_to_install():
    proc = _run("import npgjax.rl")
    assert proc.returncode != 0
    assert "ImportError" in proc.stderr or "ModuleNotFoundError" in proc.stderr
    assert "pip install 'npgjax[rl]'" in proc.stderr


def test_license_and_py_typed_ship_in_the_wheel():
    assert PYPROJECT["build-system"]["requires"][0].replace(" ", "") == "setuptools>=77"
    assert PROJECT["license"] == "Apache-2.0"
    assert PROJECT["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["npgjax"]
    assert (ROOT / "npgjax" / "py.typed").is_file()


def test_version_is_written_once():
    assert "version" not in PROJECT and PROJECT["dynamic"] == ["version"]
    attr = PYPROJECT["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    assert attr == "npgjax._version.__version__"
    assert re.fullmatch(r"\d+\.\d+\.\d+([ab]|rc|\.dev)?\d*", npgjax.__version__)
    hits = [
        p.relative_to(ROOT)
        for p in [ROOT / "pyproject.toml", *sorted((ROOT / "npgjax").rglob("*.py"))]
        if re.search(r"""^\s*(__version__|version)\s*=\s*["']""", p.read_text(), re.M)
    ]
    assert hits == [pathlib.Path("npgjax/_version.py")]
    assert f"## [{npgjax.__version__}]" in (ROOT / "CHANGELOG.md").read_text()


def test_lazy_names_match_all_and_the_static_imports():
    """``import npgjax`` loads each public name on first use (``_EXPORTS``): the table,
    ``__all__`` and the imports that type checkers and the docs read must agree."""
    tree = ast.parse((ROOT / "npgjax" / "__init__.py").read_text())
    (block,) = [n for n in tree.body if isinstance(n, ast.If)]  # if _TYPE_CHECKING:
    static = {a.name: node.module for node in block.body for a in node.names}
    assert static == npgjax._EXPORTS
    assert set(npgjax.__all__) == set(npgjax._EXPORTS)
    for name, module in npgjax._EXPORTS.items():
        assert getattr(npgjax, name) is getattr(importlib.import_module(module), name)
    assert npgjax.solvers is importlib.import_module("npgjax.solvers")  # submodules too
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        npgjax.nope  # noqa: B018
    proc = subprocess.run([sys.executable, "-c", "import sys, npgjax; print(sorted("
                           "m for m in ('jax', 'optax', 'chex') if m in sys.modules))"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stderr[-2000:]
