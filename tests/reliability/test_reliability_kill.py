"""SIGKILL during every data-side writer: a killed run never leaves an output that looks complete, the previous
output survives intact, and the next run cleans the leftovers and succeeds.

Each case runs the writer in a child process that sends itself SIGKILL at a chosen moment (after N records are
written, or just before the final rename), so the kill lands mid-write deterministically instead of by timing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from reliability_helpers import SRC

from chatforge.errors import ChatforgeError

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")

PRELUDE = """
import os, signal, sys
import chatforge.io as cio
_real_replace = os.replace
def die():
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)
def kill_on_replace(marker):
    def replace(src, dst, *a, **k):
        if str(dst).endswith(marker):
            die()
        return _real_replace(src, dst, *a, **k)
    os.replace = replace
def kill_after(obj, name, n):
    real = getattr(obj, name)
    count = [0]
    def wrapped(*a, **k):
        count[0] += 1
        if count[0] > n:
            die()
        return real(*a, **k)
    setattr(obj, name, wrapped)
"""


def run_killed(body: str, cwd: Path) -> subprocess.CompletedProcess:
    script = PRELUDE + textwrap.dedent(body)
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    return proc


def _records(path: Path, n: int) -> Path:
    rows = [
        {"messages": [{"role": "user", "content": f"question {i}?"}, {"role": "assistant", "content": f"answer {i}"}]}
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _assert_complete_clean_output(out: Path, n_in: int) -> None:
    report = json.loads((out / "report.json").read_text())
    counts = report["split"]["counts"]
    for name, n in counts.items():
        assert len((out / f"{name}.jsonl").read_text().splitlines()) == n
    assert sum(counts.values()) == report["records_out"] and report["records_in"] == n_in


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".tmp-"))


CLEAN_WRITE = """
import chatforge.data.clean as clean
real_dir = cio.atomic_dir
import contextlib
@contextlib.contextmanager
def dying_dir(*a, **k):
    with real_dir(*a, **k) as tmp:
        kill_after(clean, "record_to_dict", {n})
        yield tmp
cio.atomic_dir = dying_dir
from chatforge.cli import main
main(["data", "clean", "--input", "in.jsonl", "--output", "out", "dedup.near=false", *{extra}])
"""


@pytest.mark.parametrize("moment", ["mid_write", "before_rename"])
def test_killed_data_clean_leaves_nothing_that_looks_complete(moment, tmp_path):
    _records(tmp_path / "in.jsonl", 3000)
    if moment == "mid_write":
        body = CLEAN_WRITE.format(n=1000, extra="[]")
    else:
        body = """
kill_on_replace("out")
from chatforge.cli import main
main(["data", "clean", "--input", "in.jsonl", "--output", "out", "dedup.near=false"])
"""
    proc = run_killed(body, tmp_path)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not (tmp_path / "out").exists(), "a killed run must not leave out/train.jsonl"
    assert _leftovers(tmp_path), "the partial output lives only in a .tmp- folder"
    from chatforge.cli import main

    assert main(["data", "clean", "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out"),
                 "dedup.near=false"]) == 0  # fmt: skip
    _assert_complete_clean_output(tmp_path / "out", 3000)
    assert _leftovers(tmp_path) == [], "the next run removes the killed run's temp folder"


def test_killed_overwrite_keeps_the_previous_output(tmp_path):
    _records(tmp_path / "in.jsonl", 2000)
    from chatforge.cli import main

    assert main(["data", "clean", "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out"),
                 "dedup.near=false"]) == 0  # fmt: skip
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    proc = run_killed(CLEAN_WRITE.format(n=500, extra='["--overwrite", "seed=7"]'), tmp_path)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before


def test_killed_converter_write_leaves_no_partial_jsonl(tmp_path):
    """`data demo` writes through the converters' write_jsonl: killed after 100 of 300 conversations."""
    body = """
import chatforge.data.schema as schema
kill_after(schema.Conversation, "to_dict", 100)
from chatforge.cli import main
main(["data", "demo", "--output", "demo", "--train", "300", "--test", "20"])
"""
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "train.jsonl").write_text("old\n")
    proc = run_killed(body, tmp_path)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert (tmp_path / "demo" / "train.jsonl").read_text() == "old\n"
    assert not (tmp_path / "demo" / "test.jsonl").exists()


def test_killed_save_config_keeps_the_old_file(tmp_path):
    (tmp_path / "cfg.yaml").write_text("# old\n")
    body = """
kill_on_replace("cfg.yaml")
from chatforge.config import save_config
from chatforge.data.clean import CleanConfig
save_config(CleanConfig(), "cfg.yaml")
"""
    proc = run_killed(body, tmp_path)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert (tmp_path / "cfg.yaml").read_text() == "# old\n"
    assert _leftovers(tmp_path)  # the temp file, which clean_leftovers removes
    from chatforge.io import clean_leftovers

    clean_leftovers(tmp_path)
    assert _leftovers(tmp_path) == []


def test_killed_token_cache_write_is_never_loaded(tmp_path):
    body = """
import numpy as np
from pathlib import Path
from chatforge.data import token_cache as tc
ids = np.arange(10, dtype=np.int32)
ds = tc.TokenizedDataset(tc.Ragged(ids, np.array([0, 4, 10])), tc.Ragged(np.ones(10, np.bool_), np.array([0, 4, 10])), {"records": 2})
kill_on_replace("key0")
tc.save_tokenized(ds, Path("cache") / "key0")
"""
    proc = run_killed(body, tmp_path)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    cache = tmp_path / "cache"
    assert not (cache / "key0").exists()
    (leftover,) = _leftovers(cache)
    # A later save removes temp folders untouched for an hour (a younger one may belong to a live process).
    import numpy as np

    from chatforge.data import token_cache as tc

    old = time.time() - 7200
    os.utime(cache / leftover, (old, old))
    ds = tc.TokenizedDataset(tc.Ragged(np.arange(3, dtype=np.int32), np.array([0, 3])),
                             tc.Ragged(np.ones(3, np.bool_), np.array([0, 3])), {"records": 1})  # fmt: skip
    tc.save_tokenized(ds, cache / "key1")
    assert _leftovers(cache) == [] and len(tc.load_tokenized(cache / "key1")) == 1


def test_lock_is_exclusive_and_released_by_sigkill(tmp_path):
    from chatforge.io import lock_file

    lock = tmp_path / "run" / ".lock"
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from chatforge.io import lock_file\nwith lock_file({str(lock)!r}):\n"
            "    print('held', flush=True)\n    import time; time.sleep(60)",
        ],  # fmt: skip
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "held"
        t0 = time.perf_counter()
        with pytest.raises(ChatforgeError, match=rf"in use by another chatforge process \(process {child.pid}\)"):
            with lock_file(lock):
                pass
        assert time.perf_counter() - t0 < 1, "a held lock fails fast"
    finally:
        child.kill()
        child.wait()
    with lock_file(lock):  # the kernel dropped the dead process's lock: no stale-lock cleanup needed
        assert lock.read_text().strip() == str(os.getpid())
