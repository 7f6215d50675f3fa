"""Test order and grouping for `make test` (pytest -n 2 --dist loadgroup).

The fixtures are in tests/conftest.py.
"""

from __future__ import annotations

import pytest

# Modules whose tests start subprocesses or compile whole trainers: collected first, so
# that with `pytest -n 2` both workers begin with the long tests and the short ones fill
# in at the end (otherwise one long test left last keeps a worker busy alone).
_LONG_FIRST = ("test_sharding_train", "test_sharding_core", "test_train_cli",
               "test_evaluate_cli", "test_rl_open", "test_rl", "test_recurrent", "test_docs")


# Modules with module-scoped fixtures (a trained run, a subprocess) or, in test_docs,
# pages whose blocks build on each other: each runs whole on one worker, so that what
# they build is built once (split over two workers, each would build it).
_ONE_WORKER = ("test_sharding_train", "test_sharding_core", "test_train_cli",
               "test_evaluate_cli", "test_policy", "test_docs")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.stem in _ONE_WORKER:
            item.add_marker(pytest.mark.xdist_group(item.path.stem))

    def rank(item):
        name = item.path.stem
        return _LONG_FIRST.index(name) if name in _LONG_FIRST else len(_LONG_FIRST)

    items.sort(key=rank)  # stable: the order inside each module is kept
