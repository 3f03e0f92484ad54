"""Exact resume: a run interrupted (even by SIGKILL) and resumed logs the same loss at every step as a run that was
never interrupted, and the comparison is sharp enough to catch a resume that forgets any part of the state."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from train_helpers import losses, run_config

from chatforge.config import config_to_dict
from chatforge.training import checkpoint as ck
from chatforge.training import train

TOL = 1e-6
# Dropout (RNG), warmup + cosine (scheduler), accumulation, several epochs (data order per epoch): all state matters.
SETTINGS = [
    "peft.dropout=0.1",
    "train.warmup_steps=3",
    "train.scheduler=cosine",
    "train.grad_accum=2",
    "train.max_steps=16",
    "train.save_every=4",
    "train.save_total_limit=10",
]


# The CLI in a child process whose optimizer steps are slowed down, so the test can kill it between checkpoints
# (the slowing lives here, in the test, not in the training code).
SLOW_TRAIN = """
import sys, time, torch
step = torch.optim.AdamW.step
def slow_step(self, *args, **kwargs):
    time.sleep(0.15)
    return step(self, *args, **kwargs)
torch.optim.AdamW.step = slow_step
from chatforge.cli import main
sys.exit(main(["train", sys.argv[1]]))
"""


def _max_diff(a: dict[int, float], b: dict[int, float]) -> float:
    assert a.keys() == b.keys(), (sorted(a), sorted(b))
    return max(abs(a[k] - b[k]) for k in a)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run with checkpoints every 4 steps (6 steps per epoch, so it crosses two epochs)."""
    tmp = tmp_path_factory.mktemp("ref")
    out = train(run_config(tmp, *SETTINGS)).output_dir
    return tmp, out, losses(out)


def _resume_from_step_8(reference, dest: Path, break_state=None) -> dict[int, float]:
    """Copy the finished run, cut it back to its step-8 checkpoint, and let `resume: auto` redo steps 9-16."""
    tmp, out, _ = reference
    shutil.copytree(out, dest)
    for name in ("step-000012", "step-000016"):
        shutil.rmtree(dest / "checkpoints" / name)
    (dest / "summary.json").unlink()
    if break_state:
        break_state(dest / "checkpoints" / "step-000008")
    result = train(run_config(tmp, *SETTINGS, "train.resume=auto", f"output.dir={dest}"))
    assert result.summary["resumed_from"].endswith("step-000008")
    return losses(dest)


def test_resume_reproduces_every_step(reference, tmp_path):
    _, out, want = reference
    got = _resume_from_step_8(reference, tmp_path / "resumed")
    assert sorted(got) == list(range(1, 17))
    assert _max_diff(want, got) < TOL
    a = load_file(out / "adapter_model.safetensors")
    b = load_file(tmp_path / "resumed" / "adapter_model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-7, rtol=0) for k in a)


def _edit_state(**changes):
    def edit(path: Path):
        state = json.loads((path / "state.json").read_text())
        state.update(changes)
        (path / "state.json").write_text(json.dumps(state))

    return edit


@pytest.mark.parametrize(
    "broken",
    ["optimizer", "scheduler", "rng", "model", "data_position"],
)
def test_a_resume_that_forgets_state_is_caught(reference, tmp_path, monkeypatch, broken):
    """Each part of the saved state matters: leaving any one out changes the logged losses far beyond TOL."""
    edit = None
    if broken == "data_position":
        edit = _edit_state(batch=0)
    else:
        monkeypatch.setattr(ck, f"restore_{broken}", lambda *args: None)
    got = _resume_from_step_8(reference, tmp_path / "broken", edit)
    assert _max_diff(reference[2], got) > 1e3 * TOL


def test_resume_refuses_changed_data(reference, tmp_path):
    tmp, out, _ = reference
    shutil.copytree(out, tmp_path / "changed")
    with pytest.raises(Exception, match="batch_size changed"):
        train(
            run_config(tmp, *SETTINGS, "train.batch_size=2", "train.resume=auto", f"output.dir={tmp_path / 'changed'}")
        )


@pytest.mark.integration
def test_sigkill_mid_run_then_resume_matches_uninterrupted(reference, tmp_path):
    tmp, _, want = reference
    cfg = run_config(tmp, *SETTINGS, f"output.dir={tmp_path / 'killed'}")
    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(yaml.safe_dump(config_to_dict(cfg)))
    out = Path(cfg.output.dir)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_TRAIN, str(cfg_path)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 120
    try:
        # Kill after the step-8 checkpoint is complete and at least one later step was logged.
        while time.time() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"training exited before it could be killed: {proc.stderr.read().decode()[-2000:]}")
            if ck.is_complete(out / "checkpoints" / "step-000008") and max(losses(out), default=0) >= 9:
                break
            time.sleep(0.02)
        else:
            pytest.fail("no checkpoint appeared in time")
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "summary.json").exists()
    killed_at = max(losses(out))
    assert 9 <= killed_at < 16
    # What a kill during a checkpoint write leaves behind must be ignored: a temp folder and an unmarked step folder.
    (out / "checkpoints" / ".tmp-step-000099-1").mkdir()
    (out / "checkpoints" / "step-000098").mkdir()

    # Resume in this process (a fresh process is not needed for exactness; it saves a slow interpreter start).
    train(run_config(tmp, *SETTINGS, f"output.dir={out}", "train.resume=auto"))
    summary = json.loads((out / "summary.json").read_text())
    assert Path(summary["resumed_from"]).name in {f"step-{s:06d}" for s in (8, 12)}
    got = losses(out)
    assert sorted(got) == list(range(1, 17))
    assert _max_diff(want, got) < TOL


def test_resume_from_an_explicit_checkpoint(reference, tmp_path):
    tmp, out, want = reference
    dest = tmp_path / "explicit"
    shutil.copytree(out, dest)
    (dest / "summary.json").unlink()
    got = train(
        run_config(tmp, *SETTINGS, f"train.resume={dest / 'checkpoints' / 'step-000004'}", f"output.dir={dest}")
    )
    assert got.summary["resumed_from"].endswith("step-000004")
    assert _max_diff(want, losses(dest)) < TOL
