"""Checkpoints: atomic publication, keep-last-K, half-written ones never picked up, exact state round trips."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from chatforge.errors import ChatforgeError
from chatforge.models.tiny import tiny_llama
from chatforge.training import checkpoint as ck
from chatforge.training.adapters import apply_finetuning
from chatforge.training.config import PeftConfig


def _parts(tiny_tok, method="lora"):
    torch.manual_seed(0)
    model, _ = apply_finetuning(tiny_llama(len(tiny_tok)), PeftConfig(finetuning=method, r=2))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    return model, opt, sched


def _train_step(model, opt, sched):
    ids = torch.randint(0, 100, (2, 8))
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    sched.step()
    opt.zero_grad()


def test_keep_last_k_and_latest(tmp_path, tiny_tok):
    model, opt, sched = _parts(tiny_tok)
    for step in (2, 4, 6):
        ck.save_checkpoint(tmp_path, step, model, opt, sched, {"step": step}, keep_last=2)
    names = [p.name for p in ck.list_checkpoints(tmp_path)]
    assert names == ["step-000004", "step-000006"]
    assert ck.latest_checkpoint(tmp_path).name == "step-000006"
    assert not [p for p in ck.checkpoint_root(tmp_path).iterdir() if p.name.startswith(".")]


def test_half_written_checkpoints_are_never_picked(tmp_path, tiny_tok):
    model, opt, sched = _parts(tiny_tok)
    ck.save_checkpoint(tmp_path, 3, model, opt, sched, {"step": 3}, keep_last=5)
    root = ck.checkpoint_root(tmp_path)
    # What a SIGKILL can leave behind: a temp folder mid-write and a step folder without its marker.
    (root / ".tmp-step-000009-123").mkdir()
    (root / ".tmp-step-000009-123" / "optimizer.pt").write_bytes(b"partial")
    (root / "step-000008").mkdir()
    (root / "step-000008" / "state.json").write_text("{}")
    assert ck.latest_checkpoint(tmp_path).name == "step-000003"
    with pytest.raises(ChatforgeError, match="not a complete checkpoint"):
        ck.read_checkpoint(root / "step-000008")
    removed = {p.name for p in ck.clean_incomplete(tmp_path)}
    assert removed == {".tmp-step-000009-123", "step-000008"}
    assert [p.name for p in root.iterdir()] == ["step-000003"]


def test_marker_is_written_last(tmp_path, tiny_tok, monkeypatch):
    """If writing fails midway, nothing named step-* appears."""
    model, opt, sched = _parts(tiny_tok)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ck, "_fsync_tree", boom)
    with pytest.raises(OSError):
        ck.save_checkpoint(tmp_path, 5, model, opt, sched, {"step": 5}, keep_last=2)
    assert ck.latest_checkpoint(tmp_path) is None
    assert not any(p.name.startswith("step-") for p in ck.checkpoint_root(tmp_path).iterdir())


@pytest.mark.parametrize("method", ["lora", "full"])
def test_state_round_trip_is_exact(tmp_path, tiny_tok, method):
    model, opt, sched = _parts(tiny_tok, method)
    torch.manual_seed(1)
    _train_step(model, opt, sched)
    path = ck.save_checkpoint(tmp_path, 1, model, opt, sched, {"step": 1, "note": "x"}, keep_last=2)
    want_rng = (random.random(), np.random.rand(), torch.rand(3))
    _train_step(model, opt, sched)
    want_after = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    # A fresh process's view: new model, optimizer and scheduler, then restore everything and repeat the step.
    model2, opt2, sched2 = _parts(tiny_tok, method)
    loaded = ck.read_checkpoint(path)
    assert loaded.state["note"] == "x"
    ck.restore_model(loaded, model2)
    ck.restore_optimizer(loaded, opt2)
    ck.restore_scheduler(loaded, sched2)
    torch.manual_seed(999)
    ck.restore_rng(loaded)
    assert (random.random(), np.random.rand()) == want_rng[:2]
    assert torch.equal(torch.rand(3), want_rng[2])
    ck.restore_rng(loaded)
    assert sched2.last_epoch == 1 and sched2.get_last_lr() == [1e-2 / 2]
    random.random(), np.random.rand(), torch.rand(3)  # consume exactly what the first model consumed
    _train_step(model2, opt2, sched2)
    for name, p in model2.named_parameters():
        if p.requires_grad:
            assert torch.equal(p.detach(), want_after[name]), name
    assert (path / "model" / ("adapter_model.safetensors" if method == "lora" else "model.safetensors")).is_file()
