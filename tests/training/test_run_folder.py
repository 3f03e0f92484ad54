"""The run folder's promises: nothing of the user's is overwritten, one run per folder, resume refuses changed
settings, a finished run is not rewritten, a non-finite loss stops the run, and torchrun is refused for now."""

from __future__ import annotations

import json

import pytest
from train_helpers import losses, run_config

from chatforge.errors import ChatforgeError
from chatforge.training import train
from chatforge.training.monitor import FlopModel, Throughput
from chatforge.training.run_folder import open_run_folder


def test_a_folder_chatforge_did_not_make_is_never_written(tmp_path):
    mine = tmp_path / "my-folder"
    mine.mkdir()
    (mine / "README.md").write_text("my notes")
    for extra in ([], ["output.overwrite=true"]):
        with pytest.raises(ChatforgeError, match="not made by chatforge train"):
            train(run_config(tmp_path, "train.max_steps=1", f"output.dir={mine}", *extra))
    assert (mine / "README.md").read_text() == "my notes" and sorted(p.name for p in mine.iterdir()) == ["README.md"]
    model_dir = run_config(tmp_path).model.name_or_path  # the base model folder itself
    with pytest.raises(ChatforgeError, match="not made by chatforge train"):
        train(run_config(tmp_path, "train.max_steps=1", f"output.dir={model_dir}", "output.overwrite=true"))
    afile = tmp_path / "a-file"
    afile.write_text("x")
    with pytest.raises(ChatforgeError, match="is a file"):
        train(run_config(tmp_path, "train.max_steps=1", f"output.dir={afile}"))


def test_a_second_run_on_the_same_folder_fails_fast(tmp_path):
    cfg = run_config(tmp_path, "train.max_steps=1")
    first = open_run_folder(cfg)
    try:
        with pytest.raises(ChatforgeError, match="in use by another chatforge process"):
            open_run_folder(cfg)
    finally:
        first.close()
    open_run_folder(cfg).close()  # released again


def test_resume_refuses_a_changed_learning_rate_and_keeps_a_finished_summary(tmp_path):
    out = train(run_config(tmp_path, "train.max_steps=4", "train.save_every=2")).output_dir
    summary = (out / "summary.json").read_text()
    (out / "summary.json").unlink()
    with pytest.raises(ChatforgeError, match=r"train.learning_rate changed \(0.001 -> 0.01\)"):
        train(
            run_config(
                tmp_path, "train.max_steps=4", "train.save_every=2", "train.learning_rate=1e-2", "train.resume=auto"
            )
        )
    (out / "summary.json").write_text(summary)
    again = train(run_config(tmp_path, "train.max_steps=4", "train.save_every=2", "train.resume=auto"))
    assert again.summary["final_train_loss"] == json.loads(summary)["final_train_loss"] is not None
    assert (out / "summary.json").read_text() == summary  # not rewritten


def test_non_finite_loss_stops_with_an_error_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    from chatforge.training import objectives

    real = objectives.TokenObjective.__call__
    calls = {"n": 0}

    def diverging(self, model, batch):  # the 4th micro-batch's loss is NaN, as after a bad update
        calls["n"] += 1
        loss, metrics = real(self, model, batch)
        return (loss * float("nan") if calls["n"] == 4 else loss), metrics

    monkeypatch.setattr(objectives.TokenObjective, "__call__", diverging)
    cfg = run_config(tmp_path, "train.save_every=1", "train.max_steps=6")
    with pytest.raises(ChatforgeError, match="step 4: the loss is nan.*last good checkpoint is .*step-000003"):
        train(cfg)
    out = tmp_path / "out"
    assert not (out / "summary.json").exists()  # a failed run never looks finished
    assert sorted(losses(out)) == [1, 2, 3]  # nothing logged or applied for the bad step


def test_learning_rate_out_of_range_is_a_config_error(tmp_path):
    with pytest.raises(ChatforgeError, match="learning_rate"):
        run_config(tmp_path, "train.learning_rate=1e30")


def test_world_size_without_torchrun_is_a_clear_error(tmp_path, monkeypatch):
    # Multi-process runs are tests/training/test_distributed.py; a WORLD_SIZE without the rest of torchrun's
    # environment must not let a lone process train as if it were one of several.
    monkeypatch.setenv("WORLD_SIZE", "2")
    for var in ("RANK", "MASTER_ADDR"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ChatforgeError, match="WORLD_SIZE=2 but RANK/MASTER_ADDR are not set"):
        train(run_config(tmp_path, "train.max_steps=1"))


def test_throughput_excludes_warm_up_and_counts_model_flops(tiny_model):
    flops = FlopModel.of(tiny_model)
    n_embed = tiny_model.get_input_embeddings().weight.numel()
    assert flops.matmul_params == sum(p.numel() for p in tiny_model.parameters() if p.ndim >= 2) - n_embed
    assert flops.trained_matmul_params == flops.matmul_params  # everything trains in a fresh model
    t = Throughput(flops, peak=1e12)
    t.record(1000, 5.0, [1000], compiled=False)  # first step: warm-up
    t.record(1000, 1.0, [500, 500], compiled=False)
    t.record(1000, 9.0, [1000], compiled=True)  # compiling: warm-up
    t.record(1000, 1.0, [1000], compiled=False)
    s = t.summary()
    assert s["steady_tok_per_s"] == 1000.0 and s["warmup_steps"] == 2 and s["warmup_s"] == 14.0
    want = (6 * flops.matmul_params * 2000 + 6 * flops.layers * flops.attention_width * (2 * 500**2 + 1000**2)) / 2
    assert t.mfu() == pytest.approx(want / 1e12, rel=1e-9)
