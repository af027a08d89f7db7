"""Atomic writes, strict JSON and checksummed safetensors (fish_fl.fileio)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from fish_fl.fileio import (
    CHECKSUMS,
    CorruptFileError,
    atomic_path,
    atomic_write,
    dumps_strict,
    read_safetensors,
    save_safetensors_atomic,
    write_json_atomic,
    write_text_atomic,
)


class Boom(RuntimeError):
    pass


def strict_loads(text: str) -> Any:
    """A JSON parser that refuses NaN and infinities, as any non-Python parser does."""

    def refuse(name: str) -> None:
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def _leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


@pytest.mark.parametrize("mode", ["wb", "w"])
def test_a_failing_write_leaves_the_old_file_and_no_temporary(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "file.txt"
    path.write_text("old content\n")
    with pytest.raises(Boom), atomic_write(path, mode) as f:
        f.write(b"new, half written" if mode == "wb" else "new, half written")
        raise Boom
    assert path.read_text() == "old content\n"
    assert _leftovers(tmp_path, {"file.txt"}) == []


def test_a_failing_writer_by_name_leaves_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_safetensors_atomic({"x": torch.ones(3)}, path)
    before = path.read_bytes()
    with pytest.raises(Boom), atomic_path(path) as tmp:
        tmp.write_bytes(b"cut sh")
        raise Boom
    assert path.read_bytes() == before
    assert _leftovers(tmp_path, {"model.safetensors"}) == []


def test_a_write_replaces_the_file_and_keeps_its_folder_clean(tmp_path: Path) -> None:
    path = tmp_path / "file.txt"
    path.write_text("old\n")
    write_text_atomic(path, "new\n")
    assert path.read_text() == "new\n"
    with atomic_write(path) as f:
        f.write(b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    assert _leftovers(tmp_path, {"file.txt"}) == []
    # Created with the process's usual permissions, not a temporary file's 0600.
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    with pytest.raises(ValueError, match="mode must be"), atomic_write(path, "a"):
        pass


def test_non_finite_floats_are_written_as_null(tmp_path: Path) -> None:
    data = {
        "loss": float("nan"),
        "up": float("inf"),
        "nested": [1.5, float("-inf"), {"x": float("nan"), "n": 3}],
        "pair": (float("nan"), 2.0),
    }
    with pytest.raises(ValueError):
        strict_loads(json.dumps(data))  # what plain json.dumps would write
    path = tmp_path / "data.json"
    write_json_atomic(path, data)
    assert strict_loads(path.read_text()) == {
        "loss": None,
        "up": None,
        "nested": [1.5, None, {"x": None, "n": 3}],
        "pair": [None, 2.0],
    }
    assert strict_loads(dumps_strict({"a": math.nan})) == {"a": None}


def test_checksums_catch_a_flipped_bit(tmp_path: Path) -> None:
    path = tmp_path / "t.safetensors"
    tensors = {"a": torch.arange(6.0).view(2, 3), "b": torch.tensor([1, 2], dtype=torch.int64)}
    save_safetensors_atomic(tensors, path, {"note": "x"}, checksums=True)
    got, meta = read_safetensors(path, require_checksums=True)
    assert meta["note"] == "x" and CHECKSUMS in meta
    assert all(torch.equal(got[k], tensors[k]) for k in tensors)

    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # the last byte of the last tensor's data
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match="does not match its checksum") as err:
        read_safetensors(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)

    # Without checksums: readable, unless they are required.
    save_safetensors_atomic(tensors, path)
    read_safetensors(path)
    with pytest.raises(CorruptFileError, match="has no checksums"):
        read_safetensors(path, require_checksums=True)
    with pytest.raises(ValueError, match="reserved"):
        save_safetensors_atomic(tensors, path, {CHECKSUMS: "{}"})


def test_unreadable_safetensors_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "junk.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(CorruptFileError, match="not a readable safetensors file") as err:
        read_safetensors(path)
    assert "\n" not in str(err.value)
    with pytest.raises(FileNotFoundError):
        read_safetensors(tmp_path / "missing.safetensors")
