"""`chatforge verify`: a flipped byte, a missing file and an unlisted file each fail with a non-zero exit."""

from __future__ import annotations

import pytest

from chatforge import cli
from chatforge.errors import ChatforgeError
from chatforge.export.verify import verify_folder, write_checksums


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "model.safetensors").write_bytes(bytes(range(256)) * 64)
    (tmp_path / "config.json").write_text('{"a": 1}\n')
    (tmp_path / "sub" / "tokenizer.json").write_text("{}\n")
    write_checksums(tmp_path)
    return tmp_path


def test_clean_folder_verifies(folder, capsys):
    assert verify_folder(folder).ok
    assert cli.main(["verify", str(folder)]) == 0
    assert "OK: 3 files" in capsys.readouterr().out


def test_flipped_byte_is_caught(folder, capsys):
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[1000] ^= 0x01
    weights.write_bytes(bytes(data))
    result = verify_folder(folder)
    assert result.changed == ["model.safetensors"] and not result.missing and not result.extra
    assert cli.main(["verify", str(folder)]) == 1
    assert "changed: model.safetensors" in capsys.readouterr().out


def test_missing_and_extra_files_are_listed(folder, capsys):
    (folder / "sub" / "tokenizer.json").unlink()
    (folder / "notes.txt").write_text("added later")
    result = verify_folder(folder)
    assert result.missing == ["sub/tokenizer.json"] and result.extra == ["notes.txt"] and not result.changed
    assert cli.main(["verify", str(folder)]) == 1
    out = capsys.readouterr().out
    assert "missing: sub/tokenizer.json" in out and "extra (not listed): notes.txt" in out


def test_bad_sums_file_and_folder_without_sums(folder, tmp_path_factory, capsys):
    (folder / "SHA256SUMS").write_text("not a checksum line\n")
    with pytest.raises(ChatforgeError, match="line 1"):
        verify_folder(folder)
    empty = tmp_path_factory.mktemp("empty")
    assert cli.main(["verify", str(empty)]) == 2
    assert "no SHA256SUMS" in capsys.readouterr().err


def test_a_killed_exports_temp_folder_is_cleaned_on_the_next_export(tmp_path):
    import os
    import time

    from chatforge.export.merge import write_folder_atomically

    stale, fresh = tmp_path / ".tmp-out-killed", tmp_path / ".tmp-out-live"
    for folder in (stale, fresh):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"partial")
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    write_folder_atomically(tmp_path / "out", lambda tmp: (tmp / "a.txt").write_text("x"))
    assert (tmp_path / "out" / "a.txt").read_text() == "x"
    assert not stale.exists() and fresh.exists()  # a recent one may belong to a live export
