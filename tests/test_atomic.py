"""Atomic writes: complete or absent, never partial; temporaries removed on error."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from i2dl.io.files import TMP_MARKER, atomic_path, write_bytes_atomic, write_text_atomic


def _entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_write_bytes_and_text_replace_and_create_folders(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "file.txt"
    assert write_text_atomic(path, "héllo\n") == path
    assert path.read_bytes() == "héllo\n".encode()
    write_bytes_atomic(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    assert _entries(path.parent) == ["file.txt"]


def test_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "report.json"
    write_text_atomic(path, "old")

    def boom(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_text_atomic(path, "new")
    monkeypatch.undo()
    assert path.read_text() == "old" and _entries(tmp_path) == ["report.json"]


def test_atomic_path_error_in_block_removes_temporary(tmp_path: Path) -> None:
    final = tmp_path / "map.tif"
    with pytest.raises(RuntimeError, match="model failed"), atomic_path(final) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(f".map.tif{TMP_MARKER}")
        tmp.write_bytes(b"partial")
        raise RuntimeError("model failed")
    assert _entries(tmp_path) == []


def test_atomic_path_replaces_a_folder(tmp_path: Path) -> None:
    final = tmp_path / "store.zarr"
    for content in ("first", "second"):
        with atomic_path(final) as tmp:
            tmp.mkdir()
            (tmp / "zarr.json").write_text(content)
            (tmp / content).mkdir()
        assert (final / "zarr.json").read_text() == content
    assert _entries(final) == ["second", "zarr.json"]
    assert _entries(tmp_path) == ["store.zarr"]  # neither temporary nor old copy left
    with pytest.raises(ValueError, match="bad"), atomic_path(final) as tmp:
        tmp.mkdir()
        (tmp / "zarr.json").write_text("third")
        raise ValueError("bad")
    assert (final / "zarr.json").read_text() == "second"
    assert _entries(tmp_path) == ["store.zarr"]
