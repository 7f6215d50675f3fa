"""npgjax._files.atomic_write: readers see the old or the new bytes, never a part."""

from __future__ import annotations

import pytest

from npgjax._files import atomic_write


@pytest.mark.parametrize("sync", [True, False])
def test_replaces_the_file_and_leaves_no_temporary(tmp_path, sync):
    path = tmp_path / "state.json"
    path.write_bytes(b"old")
    atomic_write(path, b"new", sync=sync)
    assert path.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_failed_write_keeps_the_old_bytes_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "state.json"
    path.write_bytes(b"old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("npgjax._files.os.replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, b"new")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_missing_folder_raises(tmp_path):
    with pytest.raises(OSError):
        atomic_write(tmp_path / "missing" / "x.json", b"{}")
