"""The UI's workspace folder: safe path resolution below it, and the jobs (CLI subprocesses) whose folders live in it.

Layout (every path the UI reads or writes is below the workspace root):

    data/            dataset files (uploaded from the page or copied in by hand)
    models/          optional local model folders
    runs/NAME/       one `chatforge train` run: its output.dir, plus ui-job.json, stdout.log, stderr.log, launch.yaml
    evals/NAME/      one `chatforge eval` run (its output.dir)
    exports/NAME/    one `chatforge export`: the merged model in model/, plus the job files
    compare/NAME/    one `chatforge eval compare`

A job's status is read from its folder, never from memory, so the page shows the same state after the UI restarts:
`ui-job.json` records the pid and the process start time (pid reuse cannot fake a live job); the kind's result file
(summary.json for a run) means finished; a dead process without it means failed (or stopped, when the UI stopped it).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import chatforge
from chatforge.errors import ChatforgeError

JOB_FILE = "ui-job.json"
KINDS = {"runs": "train", "evals": "eval", "exports": "export", "compare": "compare"}
# The file each kind writes last: its presence means the job finished its work.
DONE_FILE = {"runs": "summary.json", "evals": "report.json", "exports": "model/SHA256SUMS", "compare": "compare.md"}
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SRC_DIR = str(Path(chatforge.__file__).resolve().parents[1])


class PathError(ChatforgeError):
    """A path outside the workspace, or one that does not exist where it must."""


def check_name(name: str, what: str = "name") -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ChatforgeError(
            f"{what} {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter/digit"
        )
    return name


def _proc_start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux /proc), or None if no such live process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()  # after "pid (comm) "
    if fields[0] in ("Z", "X"):  # zombie / dead: it has exited
        return None
    return int(fields[19])


def _alive(pid: int, start: int | None) -> bool:
    if Path("/proc").is_dir() and Path("/proc/self/stat").exists():
        now = _proc_start_time(pid)
        return now is not None and (start is None or now == start)
    try:  # no /proc (macOS): a signal-0 probe is the best there is
        os.kill(pid, 0)
    except OSError:
        return False
    return True


class Workspace:
    """Paths below one root folder, and the jobs launched into it."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        for sub in ("data", "models", *KINDS):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._procs: dict[Path, subprocess.Popen] = {}
        self._lock = threading.Lock()

    # -- paths -----------------------------------------------------------------------------------------------------

    def path(self, rel: str | Path, *, must_exist: bool = False, what: str = "path") -> Path:
        """`rel` (relative to the root, or absolute) resolved with symlinks; PathError unless it lies below the root."""
        text = str(rel)
        if not text.strip() or "\x00" in text:
            raise PathError(f"{what}: empty or invalid path")
        p = Path(text).expanduser()
        full = (p if p.is_absolute() else self.root / p).resolve()
        if full != self.root and self.root not in full.parents:
            raise PathError(f"{what} {text!r} is outside the workspace {self.root}")
        if must_exist and not full.exists():
            raise PathError(f"{what} {text!r} does not exist in the workspace")
        return full

    def rel(self, path: Path) -> str:
        return path.resolve().relative_to(self.root).as_posix()

    def job_dir(self, kind: str, name: str) -> Path:
        if kind not in KINDS:
            raise ChatforgeError(f"unknown job kind {kind!r}")
        return self.root / kind / check_name(name)

    # -- jobs ------------------------------------------------------------------------------------------------------

    def launch(self, kind: str, name: str, args: list[str], folder: Path | None = None) -> dict[str, Any]:
        """Start `chatforge ARGS...` (this interpreter, this chatforge source) in the workspace; stdout and stderr go
        to log files in the job folder, which must be new. The child has its own session, so it outlives the UI."""
        folder = folder or self.job_dir(kind, name)
        with self._lock:
            if (folder / JOB_FILE).exists():
                raise ChatforgeError(f"{kind}/{name} already exists; choose another name")
            folder.mkdir(parents=True, exist_ok=True)
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(p for p in (SRC_DIR, env.get("PYTHONPATH")) if p)
            env["PYTHONUNBUFFERED"] = "1"
            argv = [sys.executable, "-m", "chatforge.cli", *args]
            with open(folder / "stdout.log", "wb") as out, open(folder / "stderr.log", "wb") as err:
                proc = subprocess.Popen(
                    argv,
                    cwd=self.root,
                    stdout=out,
                    stderr=err,
                    stdin=subprocess.DEVNULL,
                    env=env,
                    start_new_session=True,
                )
            meta = dict(
                kind=kind,
                name=name,
                command=["chatforge", *args],
                pid=proc.pid,
                proc_start=_proc_start_time(proc.pid),
                started=time.time(),
            )
            self._write_meta(folder, meta)
            self._procs[folder] = proc
        return meta

    def _write_meta(self, folder: Path, meta: dict[str, Any]) -> None:
        tmp = folder / (JOB_FILE + ".tmp")
        tmp.write_text(json.dumps(meta, indent=2))
        os.replace(tmp, folder / JOB_FILE)

    def meta(self, folder: Path) -> dict[str, Any] | None:
        try:
            return json.loads((folder / JOB_FILE).read_text())
        except (OSError, ValueError):
            return None

    def status(self, kind: str, folder: Path, meta: dict[str, Any]) -> str:
        """running | finished | stopped | failed, from the folder and the process table."""
        proc = self._procs.get(folder)
        if proc is not None and proc.poll() is not None:  # reap our own child (else it lingers as a zombie)
            self._procs.pop(folder, None)
            if "returncode" not in meta:
                meta["returncode"] = proc.returncode
                meta["ended"] = time.time()
                self._write_meta(folder, meta)
        if "returncode" not in meta and _alive(int(meta["pid"]), meta.get("proc_start")):
            return "running"
        if (folder / DONE_FILE[kind]).exists() and meta.get("returncode", 0) == 0:
            return "finished"
        return "stopped" if meta.get("stopped") else "failed"

    def stop(self, kind: str, folder: Path) -> bool:
        """SIGTERM the job's process group (the child leads its own session); False if it was not running."""
        meta = self.meta(folder)
        if meta is None or self.status(kind, folder, meta) != "running":
            return False
        meta["stopped"] = True
        self._write_meta(folder, meta)
        try:
            os.killpg(int(meta["pid"]), signal.SIGTERM)
        except ProcessLookupError:
            return False
        return True

    def error_text(self, folder: Path, meta: dict[str, Any], status: str, lines: int = 40) -> str | None:
        """Why a job failed: the last lines of its stderr log, plus how the process ended when known."""
        if status != "failed":
            return None
        tail = self.log_tail(folder / "stderr.log", lines)
        rc = meta.get("returncode")
        if rc is None:
            how = "the process is gone without finishing (killed from outside, or the machine restarted)"
        elif rc < 0:
            how = f"the process was killed by signal {-rc} ({signal.Signals(-rc).name})"
        else:
            how = f"the process exited with status {rc}"
        return (tail.rstrip() + "\n\n" if tail.strip() else "") + how

    @staticmethod
    def log_tail(path: Path, lines: int) -> str:
        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                # Progress lines on a terminal end in \r; in a log every redraw is one line.
                return "".join(deque((ln.split("\r")[-1] for ln in fh), maxlen=lines))
        except OSError:
            return ""

    def jobs(self, kind: str) -> list[tuple[str, Path, dict[str, Any]]]:
        out = []
        for folder in sorted((self.root / kind).iterdir()):
            meta = self.meta(folder) if folder.is_dir() else None
            if meta is not None:
                out.append((folder.name, folder, meta))
        return out
