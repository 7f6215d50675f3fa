"""Import gymnax without paying for its plotting libraries up front.

gymnax imports seaborn and matplotlib (pyplot, colors) at module level, for rendering only; they
take about 1 s of a 2 s start. Before gymnax is imported, each is put in
``sys.modules`` as a stand-in that imports the real module on its first attribute
access and forwards to it from then on, so rendering and plotting still work.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType
from typing import Any

from npgjax._gc import paused_gc

_DEFERRED = ("matplotlib", "matplotlib.colors", "matplotlib.pyplot", "seaborn")


class _Deferred(ModuleType):
    """A module that imports the real one when an attribute it lacks is read."""

    def __getattr__(self, attr: str) -> Any:
        name = self.__name__
        if sys.modules.get(name) is self:
            del sys.modules[name]
            real = importlib.import_module(name)
            self.__dict__.update(
                {k: v for k, v in real.__dict__.items() if k not in ("__class__",)}
            )
            object.__setattr__(self, "_npgjax_real", real)
        real = self.__dict__.get("_npgjax_real") or sys.modules[name]
        return getattr(real, attr)


def _defer(name: str) -> None:
    if name in sys.modules:
        return
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return
    if spec is None:
        return  # not installed: let gymnax raise as it would
    stand_in = _Deferred(name)
    stand_in.__spec__ = spec
    stand_in.__file__ = spec.origin
    stand_in.__path__ = list(spec.submodule_search_locations or [])
    sys.modules[name] = stand_in
    parent, _, child = name.rpartition(".")
    if parent:  # `import matplotlib.pyplot` reads the attribute on the parent
        setattr(sys.modules[parent], child, stand_in)


def import_gymnax() -> ModuleType:
    """``import gymnax``, with seaborn and matplotlib (pyplot, colors) imported on first use."""
    with paused_gc():  # npgjax/_gc.py
        if "gymnax" not in sys.modules:
            for name in _DEFERRED:
                _defer(name)
        import gymnax

    return gymnax
