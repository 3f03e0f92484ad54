"""What every reliability test checks: a failure is a clean error (exit code, no traceback, named location)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"


def check_clean_error(rc: int, err: str, expect: list[str]) -> None:
    """A clean error: exit code 1 or 2, no traceback, one `chatforge ...: error:` line naming what is wrong."""
    assert rc in (1, 2), f"exit code {rc}, stderr:\n{err}"
    assert "Traceback" not in err, err
    assert "error:" in err, err
    missing = [word for word in expect if word not in err]
    assert not missing, f"error message lacks {missing}:\n{err}"


def run_subprocess(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """The CLI as a user runs it (`python -m chatforge.cli ...`), with this checkout's source first on the path."""
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "chatforge.cli", *map(str, argv)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
