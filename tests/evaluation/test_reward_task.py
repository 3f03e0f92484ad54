"""The `reward` eval task: a tiny reward model trained here scores held-out pairs above chance; the intervals are the
hand-computed ones; a causal LM and non-pair records are refused clearly."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from chatforge.errors import ChatforgeError, DataError
from chatforge.evaluation.commands import evaluate
from chatforge.evaluation.config import load_eval_config
from chatforge.evaluation.reward import mean_with_ci
from chatforge.models.tiny import tiny_llama, tiny_tokenizer
from chatforge.training import train
from chatforge.training.config import load_train_config

WORDS = ["hello", "world", "fox", "dog"]


def _pairs(path: Path, n: int, seed: int) -> Path:
    rng = random.Random(seed)
    with open(path, "w") as fh:
        for _ in range(n):
            words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6)))
            rec = {"messages": [{"role": "user", "content": "answer: " + words}]}
            fh.write(json.dumps({**rec, "chosen": "Paris " + words, "rejected": "Berlin " + words}) + "\n")
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rm")
    model = tmp / "tiny-model"
    tok = tiny_tokenizer()
    tiny_llama(len(tok)).save_pretrained(model)
    tok.save_pretrained(model)
    cfg = load_train_config(
        None,
        [
            f"model.name_or_path={model}",
            f"data.train=[{_pairs(tmp / 'train.jsonl', 40, 0)}]",
            "data.val_size=0",
            "data.max_length=64",
            "template.name=chatml",
            f"output.dir={tmp / 'out'}",
            "train.stage=rm",
            "train.num_threads=1",
            "train.batch_size=4",
            "train.max_steps=15",
            "train.learning_rate=3e-3",
            "train.scheduler=constant",
            "train.progress=false",
            "train.tensorboard=false",
            "peft.r=4",
            "peft.alpha=8",
        ],
    )
    return tmp, model, train(cfg).output_dir


def _eval(tmp: Path, *overrides: str):
    cfg = load_eval_config(
        None,
        [
            "eval.tasks=[reward]",
            "template.name=chatml",
            "data.max_length=64",
            "model.device=cpu",
            "output.overwrite=true",
            f"output.dir={tmp / 'eval'}",
            *overrides,
        ],
    )
    return evaluate(cfg)


def test_held_out_pair_accuracy_beats_chance_with_intervals(trained):
    tmp, model, out = trained
    held_out = _pairs(tmp / "heldout.jsonl", 30, 7)
    folder, report = _eval(tmp, f"model.name_or_path={model}", f"model.adapter={out}", f"data.val=[{held_out}]")
    m = report["tasks"]["reward"]["metrics"]
    assert m["pair_accuracy"] > 0.9  # chance is 0.5
    assert m["pair_accuracy_ci95_low"] <= m["pair_accuracy"] <= m["pair_accuracy_ci95_high"]
    assert m["pair_accuracy_ci95_low"] > 0.5
    assert m["mean_margin"] > 0 and m["mean_margin_ci95_low"] < m["mean_margin"] < m["mean_margin_ci95_high"]
    preds = [json.loads(line) for line in (folder / "predictions_reward.jsonl").read_text().splitlines()]
    assert len(preds) == 30
    margins = [p["margin"] for p in preds]
    assert m["mean_margin"] == pytest.approx(sum(margins) / 30, rel=1e-9)
    assert m["pair_accuracy"] == sum(p > 0 for p in margins) / 30


def test_mean_interval_equals_the_hand_computation():
    values = [1.0, 2.0, 4.0, 5.0]
    mean, lo, hi = mean_with_ci(values)
    sd = math.sqrt(((1 - 3) ** 2 + (2 - 3) ** 2 + (4 - 3) ** 2 + (5 - 3) ** 2) / 3)
    assert mean == 3.0
    assert (lo, hi) == pytest.approx((3 - 1.959964 * sd / 2, 3 + 1.959964 * sd / 2), rel=1e-9)


def test_a_causal_lm_and_non_pairs_are_refused(trained):
    tmp, model, out = trained
    held_out = _pairs(tmp / "heldout2.jsonl", 4, 3)
    with pytest.raises(ChatforgeError, match="needs a reward model"):
        _eval(tmp, f"model.name_or_path={model}", f"data.val=[{held_out}]")
    chat = tmp / "chat.jsonl"
    chat.write_text(json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}))
    with pytest.raises(DataError, match="needs preference pairs"):
        _eval(tmp, f"model.name_or_path={model}", f"model.adapter={out}", f"data.val=[{chat}]")
