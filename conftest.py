"""Test order for `make test` (pytest -n 2 --dist loadgroup); fixtures: tests/conftest.py."""

from __future__ import annotations

# Modules whose tests start subprocesses or compile whole trainers: collected first, so
# that with `pytest -n 2` both workers begin with the long tests and the short ones fill
# in at the end (otherwise one long test left last keeps a worker busy alone).
_LONG_FIRST = ("test_sharding_train", "test_sharding_core", "test_train_cli",
               "test_evaluate_cli", "test_rl_open", "test_rl", "test_recurrent", "test_docs")


def pytest_collection_modifyitems(config, items):
    def rank(item):
        name = item.path.stem
        return _LONG_FIRST.index(name) if name in _LONG_FIRST else len(_LONG_FIRST)

    items.sort(key=rank)  # stable: the order inside each module is kept
