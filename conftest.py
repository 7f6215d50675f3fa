"""Test order for `make test`; the fixtures are in tests/conftest.py.

`make test` runs `pytest -n 2 --dist loadfile --no-loadscope-reorder`: each test file runs
whole on one worker, so its module-scoped fixtures (a 4-device subprocess, a trained
run) and a docs page's chained blocks are built once, not once per worker (measured
with `--dist load`: the 85 s fixture of test_sharding_train built in both workers), and
the files start in the order below.
"""

from __future__ import annotations

# Files whose tests start subprocesses or compile whole trainers: collected first, so
# that both workers begin with the long files and the short ones fill in at the end
# (otherwise one long file left last keeps a worker busy alone).
_LONG_FIRST = ("test_sharding_train", "test_sharding_core", "test_train_cli",
               "test_evaluate_cli", "test_rl_open", "test_rl", "test_recurrent", "test_docs")


def pytest_collection_modifyitems(config, items):
    def rank(item):
        name = item.path.stem
        return _LONG_FIRST.index(name) if name in _LONG_FIRST else len(_LONG_FIRST)

    items.sort(key=rank)  # stable: the order inside each module is kept
