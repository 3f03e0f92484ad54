"""train.restore_best: a run whose validation loss rises after its best step ends with the best step's weights."""

from __future__ import annotations

import json
import random

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import WORDS, run_config

from chatforge.errors import ChatforgeError
from chatforge.training import train
from chatforge.training.best import BestKeeper, best_dir


def _write(path, n, seed, reply):
    rng = random.Random(seed)
    with open(path, "w") as fh:
        for _ in range(n):
            words = [rng.choice(WORDS) for _ in range(rng.randint(3, 8))]
            conv = {
                "messages": [
                    {"role": "user", "content": "say: " + " ".join(words)},
                    {"role": "assistant", "content": reply},
                ]
            }
            fh.write(json.dumps(conv) + "\n")
    return path


def _evals(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["val_loss"] for r in rows if r["kind"] == "eval"}


@pytest.fixture
def conflicting(tmp_path):
    # Train on one fixed reply, validate on another: validation first improves (the reply's shape and its end of
    # turn), then worsens as the model commits to the training reply, so the best step is well before the last.
    train_file = _write(tmp_path / "train.jsonl", 48, 0, reply="fox dog")
    val_file = _write(tmp_path / "val.jsonl", 12, 1, reply="fox lazy")
    return train_file, val_file


def _cfg(tmp_path, data, val, *extra):
    return run_config(
        tmp_path,
        f"data.val=[{val}]",
        "train.max_steps=40",
        "train.eval_every=4",
        "train.learning_rate=1e-2",
        "train.scheduler=constant",
        *extra,
        data=data,
    )


def test_restore_best_saves_the_best_steps_weights(tmp_path, conflicting):
    torch.manual_seed(0)
    data, val = conflicting
    result = train(_cfg(tmp_path, data, val, "train.restore_best=true", "train.early_stopping_patience=3"))
    out, summary = result.output_dir, result.summary
    evals = _evals(out)
    best_step = min(evals, key=evals.get)
    assert best_step < max(evals), f"setup: validation must rise after its best step, got {evals}"
    assert summary["best_step"] == best_step and summary["stopped_early"] is True
    assert summary["saved_step"] == best_step and summary["restored_best"] is True
    info = json.loads((best_dir(out) / "best.json").read_text())
    assert info["step"] == best_step
    # The final adapter holds the best weights (not the last ones), and they score the best validation loss.
    final = load_file(str(out / "adapter_model.safetensors"))
    best = load_file(str(best_dir(out) / "weights.safetensors"))
    assert len(final) == len(best) > 0
    for name, value in final.items():
        match = [k for k in best if k.startswith("base_model.") and k.replace(".default", "") == name]
        assert len(match) == 1, name
        assert torch.equal(best[match[0]], value), name
    from chatforge.evaluation.commands import evaluate
    from chatforge.evaluation.config import load_eval_config

    cfg = load_eval_config(
        None,
        [
            f"model.name_or_path={tmp_path / 'tiny-model'}",
            f"model.adapter={out}",
            "template.name=chatml",
            f"data.val=[{val}]",
            "data.max_length=64",
            "eval.tasks=[lm]",
            "eval.max_samples=null",
            "eval.charts=false",
            f"output.dir={tmp_path / 'eval'}",
        ],
    )
    _, report = evaluate(cfg)
    assert report["tasks"]["lm"]["metrics"]["loss"] == pytest.approx(evals[best_step], rel=1e-4)
    assert report["tasks"]["lm"]["metrics"]["loss"] < evals[max(evals)] - 1e-3


def test_without_restore_best_the_last_weights_are_saved(tmp_path, conflicting):
    torch.manual_seed(0)
    data, val = conflicting
    summary = train(_cfg(tmp_path, data, val)).summary
    assert summary["restored_best"] is False and summary["saved_step"] == summary["steps"] == 40
    assert not best_dir(tmp_path / "out").exists()


def test_restore_refuses_a_best_folder_of_another_step(tmp_path):
    from chatforge.training.state import TrainState

    model = torch.nn.Linear(2, 2)
    keeper = BestKeeper(tmp_path, resumed=True)
    state = TrainState(step=4, best_step=4, best_val=1.0)
    keeper.after_eval(state, model)
    saved = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    state.step = 8
    assert keeper.restore(state, model) == {"saved_step": 4, "restored_best": True}
    assert torch.equal(model.weight, saved)
    state.best_step = 6  # the folder holds step 4: never restore weights of a different step
    with pytest.raises(ChatforgeError, match="best validation loss was at step 6"):
        keeper.restore(state, model)
    assert BestKeeper(tmp_path, resumed=True).saved_step == 4  # a resumed run finds the best so far on disk
    assert BestKeeper(tmp_path).saved_step is None and not best_dir(tmp_path).exists()  # a fresh run clears it


def test_refuse_examples_load_and_restore_best():
    from pathlib import Path

    from chatforge.training.config import load_train_config

    configs = sorted((Path(__file__).resolve().parents[2] / "examples" / "refuse").glob("*.yaml"))
    # an SFT and a GRPO config for each of the three runs of bench/refuse_runs.py
    assert {p.name.rsplit("_", 1)[1] for p in configs} == {"sft.yaml", "grpo.yaml"} and len(configs) == 6
    for path in configs:
        assert path.read_text().startswith("# chatforge data convert "), path.name
        cfg = load_train_config(path)
        assert cfg.train.restore_best and cfg.peft.finetuning == "lora" and cfg.data.val, path.name
        assert cfg.train.stage == path.stem.rsplit("_", 1)[1], path.name
