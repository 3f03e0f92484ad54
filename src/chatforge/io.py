"""Crash-safe file output: every file chatforge writes goes through these helpers, so a killed run never leaves a
partial file (or folder) that looks complete, and two runs never write into one folder at the same time.

    atomic_write_text(path, text)          atomic_write_bytes(path, data)         atomic_write_json(path, obj)
    with atomic_open(path) as f: ...       # stream lines into a temp file; renamed into place only on success
    with atomic_dir(folder) as tmp: ...    # build a whole folder beside the target, rename it into place
    with lock_file(folder / ".lock"): ...  # fail fast (ChatforgeError) when another process holds it
    clean_leftovers(folder)                # remove `.tmp-*` temp files/folders left by killed runs

A file is written to `.tmp-<name>-<random>` in the same folder (same file system, so the rename is atomic), flushed
and fsynced, given mode 0644 (mkstemp makes 0600, which would hide outputs from other users of a shared box),
renamed over the target with `os.replace`, and the folder is fsynced so the rename itself survives a power cut.
Readers therefore see the old file or the complete new one, never a prefix of it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from chatforge.errors import ChatforgeError

try:
    import fcntl
except ImportError:  # not POSIX: no advisory locks; atomic renames still keep every file consistent
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "TMP_PREFIX",
    "atomic_dir",
    "atomic_open",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "check_not_inside",
    "clean_leftovers",
    "fsync_dir",
    "fsync_tree",
    "lock_file",
]

TMP_PREFIX = ".tmp-"
FILE_MODE = 0o644
DIR_MODE = 0o755


def fsync_dir(folder: str | Path) -> None:
    """fsync a folder so renames/creations inside it are durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(str(folder), os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems (e.g. certain network mounts) refuse fsync on folders
        pass
    finally:
        os.close(fd)


def fsync_tree(folder: str | Path) -> None:
    """fsync every file and folder under `folder` (before renaming a freshly built folder into place)."""
    folder = Path(folder)
    for p in folder.rglob("*"):
        if p.is_file() and not p.is_symlink():
            fd = os.open(str(p), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        elif p.is_dir():
            fsync_dir(p)
    fsync_dir(folder)


def _check_target(path: Path) -> None:
    if path.is_dir():
        raise ChatforgeError(f"cannot write file {path}: a folder of that name exists")
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise ChatforgeError(f"cannot write {path}: {parent} is a file, not a folder")


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", *, encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """Open a temp file beside `path` for writing; on a clean exit it is fsynced and renamed to `path`.

    On an exception (or a kill) the target is untouched and the temp file is removed (or left as `.tmp-*`, which
    `clean_leftovers` removes). `mode` is "w" (text) or "wb" (bytes).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open mode must be 'w' or 'wb', not {mode!r}")
    path = Path(path)
    _check_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{path.name}-", dir=path.parent)
    try:
        if mode == "wb":
            fh: IO[Any] = os.fdopen(fd, "wb")
        else:
            fh = os.fdopen(fd, "w", encoding=encoding, newline="")
        with fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically (temp file, fsync, rename, fsync folder); returns the path."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str, *, encoding: str = "utf-8") -> Path:
    """Write `text` to `path` atomically; returns the path."""
    with atomic_open(path, "w", encoding=encoding) as fh:
        fh.write(text)
    return Path(path)


def atomic_write_json(path: str | Path, obj: Any, *, indent: int | None = 2) -> Path:
    """Write `obj` as JSON (UTF-8, non-ASCII kept, trailing newline) atomically; returns the path."""
    return atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=indent) + "\n")


@contextlib.contextmanager
def atomic_dir(folder: str | Path, *, replace: bool = False) -> Iterator[Path]:
    """Build a folder under a temp sibling name and rename it to `folder` when the block ends without error.

    `replace=False`: an existing `folder` is an error (raised before anything is built). `replace=True`: an existing
    folder is swapped out (renamed aside, then removed) only after the new one is complete, so a kill at any moment
    leaves either the old folder or the new one under `folder`, plus at most `.tmp-*` siblings.
    """
    shown = folder
    folder = Path(os.path.abspath(folder))  # "." or "out/" must name a real folder entry to rename
    if folder.exists() and not folder.is_dir():
        raise ChatforgeError(f"cannot create folder {shown}: a file of that name exists")
    if folder.exists() and Path.cwd().resolve().is_relative_to(folder.resolve()):
        raise ChatforgeError(f"cannot replace folder {shown}: it is (or holds) the current working folder")
    if folder.exists() and not replace:
        raise ChatforgeError(f"folder {shown} already exists")
    folder.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(folder.parent, stem=folder.name)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{folder.name}-", dir=folder.parent))
    try:
        os.chmod(tmp, DIR_MODE)
        yield tmp
        fsync_tree(tmp)
        old = None
        if folder.exists():
            old = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{folder.name}-old-", dir=folder.parent))
            os.rmdir(old)
            os.replace(folder, old)
        os.replace(tmp, folder)
        fsync_dir(folder.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def clean_leftovers(folder: str | Path, *, stem: str | None = None, older_than: float = 0.0) -> list[Path]:
    """Remove `.tmp-*` files and folders (of killed runs) directly in `folder`; only those for `stem` if given, and
    only those not modified for `older_than` seconds (where another live process may be writing one).

    Only entries carrying our prefix are touched, so user files are never removed. Returns what was removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    prefix = f"{TMP_PREFIX}{stem}-" if stem else TMP_PREFIX
    removed = []
    for entry in folder.iterdir():
        if not entry.name.startswith(prefix):
            continue
        if older_than > 0:
            try:
                if time.time() - entry.lstat().st_mtime < older_than:
                    continue
            except OSError:
                continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                entry.unlink()
        removed.append(entry)
    return removed


@contextlib.contextmanager
def lock_file(path: str | Path, *, what: str | None = None) -> Iterator[Path]:
    """Hold an exclusive advisory lock (fcntl.flock) on `path` for the block; fail fast if another process holds it.

    The lock is tied to the open file, so it is released when the process dies (even by SIGKILL): a stale lock file
    never blocks a later run. The file records the holder's pid for the error message; it is left in place (removing
    it would race with a process that has just opened it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield path
        return
    fd = os.open(str(path), os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = ""
            with contextlib.suppress(OSError, ValueError):
                pid = int(os.pread(fd, 32, 0).decode().strip() or 0)
                holder = f" (process {pid})" if pid else ""
            target = what or str(path.parent)
            raise ChatforgeError(
                f"{target} is in use by another chatforge process{holder}: lock {path} is held; wait for it to "
                "finish or use another folder"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # closing releases the lock


def check_not_inside(output: str | Path, inputs: list[str | Path], *, what: str = "output") -> None:
    """Refuse an output path equal to, inside, or containing any input (so no command writes over its input)."""
    out = Path(output).resolve()
    for item in inputs:
        src = Path(item).resolve()
        if out == src:
            raise ChatforgeError(f"{what} {output} is the input {item}; choose another folder so the input is kept")
        if out.is_relative_to(src) and src.is_dir():
            raise ChatforgeError(f"{what} {output} is inside the input folder {item}; choose a folder outside it")
        if src.is_relative_to(out):
            raise ChatforgeError(f"{what} {output} contains the input {item}; choose a folder that does not")
