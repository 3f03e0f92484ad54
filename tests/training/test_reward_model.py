"""stage rm: the Bradley-Terry loss against a hand computation, the score read at the last non-pad token, a short run
that learns a held-out preference (full and LoRA), the saved model loading in plain transformers, exact resume."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
from train_helpers import WORDS, assert_resume_is_exact, run_config

from chatforge.errors import DataError
from chatforge.training import train
from chatforge.training.reward import RewardObjective, pair_loss, sequence_scores


def write_scored_pairs(path: Path, n: int, seed: int, margin: float | None = None) -> Path:
    """Separable pairs: the chosen reply opens with 'Paris', the rejected with 'Berlin', after random prompts."""
    rng = random.Random(seed)
    with open(path, "w") as fh:
        for _ in range(n):
            words = " ".join(rng.choice(WORDS[:4]) for _ in range(rng.randint(2, 6)))
            rec = {
                "messages": [{"role": "user", "content": "answer: " + words}],
                "chosen": "Paris " + words,
                "rejected": "Berlin " + words,
            }
            if margin is not None:
                rec["margin"] = margin
            fh.write(json.dumps(rec) + "\n")
    return path


def _rm_config(tmp: Path, *overrides: str, data: Path | None = None):
    data = data or write_scored_pairs(tmp / "pairs.jsonl", 48, 0)
    return run_config(tmp, "train.stage=rm", "train.batch_size=4", *overrides, data=data)


def test_pair_loss_equals_the_hand_computation():
    chosen = torch.tensor([1.5, -0.2, 0.3], dtype=torch.float64)
    rejected = torch.tensor([0.5, 0.4, 0.3], dtype=torch.float64)
    want = [math.log1p(math.exp(-(c - r - 0.25))) for c, r in zip(chosen.tolist(), rejected.tolist())]
    assert pair_loss(chosen, rejected, 0.25).tolist() == pytest.approx(want, rel=1e-12)
    assert pair_loss(chosen, rejected).tolist()[2] == pytest.approx(math.log(2), rel=1e-12)


def test_objective_on_a_tiny_batch_matches_the_model_scores(tiny_tok):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    model = LlamaForSequenceClassification(
        LlamaConfig(
            vocab_size=len(tiny_tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            num_labels=1,
            pad_token_id=tiny_tok.pad_token_id,
        )
    )
    ids = [[5, 6, 7, 8], [5, 6, 9], [5, 6, 10, 11], [5, 12]]
    pad = tiny_tok.pad_token_id
    width = 4
    batch = {
        "input_ids": torch.tensor([r + [pad] * (width - len(r)) for r in ids]),
        "attention_mask": torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in ids]),
    }
    with torch.no_grad():
        scores = sequence_scores(model, batch)
        # each row alone, without padding: the score at its own last token
        alone = [float(model(input_ids=torch.tensor([r])).logits[0, 0]) for r in ids]
        loss, metrics = RewardObjective(margin=0.5)(model, batch)
    assert scores.tolist() == pytest.approx(alone, abs=1e-5)
    s = alone
    want = sum(math.log1p(math.exp(-(s[i] - s[i + 2] - 0.5))) for i in range(2))
    assert float(loss) == pytest.approx(want, rel=1e-5)
    assert float(metrics["margin"]) == pytest.approx((s[0] - s[2]) + (s[1] - s[3]), rel=1e-5)
    assert float(metrics["accuracy"]) == (s[0] > s[2]) + (s[1] > s[3])


@pytest.mark.parametrize(
    "settings",
    [["peft.finetuning=lora", "train.learning_rate=3e-3"], ["peft.finetuning=full", "train.learning_rate=1e-3"]],
    ids=["lora", "full"],
)
def test_a_short_rm_run_learns_a_held_out_preference_and_loads_in_transformers(tmp_path, settings):
    cfg = _rm_config(
        tmp_path,
        "data.val_size=0.25",
        "train.max_steps=15",
        "train.eval_every=5",
        "train.scheduler=constant",
        *settings,
    )
    out = train(cfg).output_dir
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r["kind"] == "eval"]
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert {"accuracy", "margin"} <= set(train_rows[0])
    assert evals[0]["val_count"] == 12
    last = evals[-1]
    assert last["val_accuracy"] > 0.9  # chance is 0.5
    assert last["val_margin"] > 0
    assert last["val_loss"] < math.log(2)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stage"] == "rm" and summary["final_val_accuracy"] == last["val_accuracy"]

    # The saved model scores like training did, loaded by plain transformers / peft.
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    if (out / "adapter_config.json").is_file():
        from peft import PeftModel

        assert json.loads((out / "adapter_config.json").read_text())["task_type"] == "SEQ_CLS"
        base = AutoModelForSequenceClassification.from_pretrained(tmp_path / "tiny-model", num_labels=1)
        base.config.pad_token_id = tok.pad_token_id
        model = PeftModel.from_pretrained(base, out)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(out)
        assert model.config.num_labels == 1 and "score.weight" in dict(model.named_parameters())
    model.eval()

    def score(reply: str) -> float:
        text = tok.apply_chat_template(
            [{"role": "user", "content": "answer: fox dog"}, {"role": "assistant", "content": reply}], tokenize=False
        )
        ids = tok(text, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            return float(model(**ids).logits[0, 0])

    assert score("Paris fox dog") > score("Berlin fox dog")


def test_per_pair_margin_field_is_used(tmp_path):
    data = write_scored_pairs(tmp_path / "pairs.jsonl", 8, 1, margin=3.0)
    cfg = _rm_config(tmp_path, "train.max_steps=1", "data.val_size=0", "train.learning_rate=0", data=data)
    out = train(cfg).output_dir
    first = next(json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines())
    # At the untrained start scores tie closely, so the loss is near log(1 + e^3) rather than log 2.
    assert first["loss"] == pytest.approx(math.log1p(math.exp(3.0 - first["margin"])), abs=0.05)


def test_a_bad_margin_is_reported_with_the_record(tmp_path):
    data = tmp_path / "bad.jsonl"
    rec = {"messages": [{"role": "user", "content": "q"}], "chosen": "a", "rejected": "b", "margin": "big"}
    data.write_text(json.dumps(rec) + "\n")
    with pytest.raises(DataError, match="margin must be a finite number"):
        train(_rm_config(tmp_path, data=data))


def test_conversations_are_refused_with_the_record(tmp_path):
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}))
    with pytest.raises(DataError, match="stage rm needs preference pairs"):
        train(_rm_config(tmp_path, data=chat))


RESUME = [
    "peft.dropout=0.1",
    "train.warmup_steps=2",
    "train.max_steps=9",
    "train.save_every=3",
    "train.save_total_limit=5",
]


@pytest.mark.parametrize("settings", [["peft.finetuning=lora"], ["peft.finetuning=full"]], ids=["lora", "full"])
def test_resume_is_exact(tmp_path, settings):
    assert_resume_is_exact(_rm_config, tmp_path, *RESUME, *settings, steps=9, resume_at=6)


def test_a_reward_model_continues_only_as_a_reward_model(tmp_path):
    """A saved reward adapter resumes training in stage rm; other stages refuse it, and stage rm refuses an LM adapter."""
    from chatforge.errors import ChatforgeError

    first = train(_rm_config(tmp_path, "train.max_steps=2", "data.val_size=0")).output_dir
    cont = train(
        _rm_config(
            tmp_path, "train.max_steps=2", "data.val_size=0", f"model.adapter={first}", f"output.dir={tmp_path / 'c'}"
        )
    )
    assert cont.summary["steps"] == 2
    with pytest.raises(ChatforgeError, match="is a reward model"):
        train(run_config(tmp_path, f"model.adapter={first}", "train.max_steps=1", f"output.dir={tmp_path / 'sft'}"))
    lm = train(run_config(tmp_path, "train.max_steps=1", f"output.dir={tmp_path / 'lm'}")).output_dir
    with pytest.raises(ChatforgeError, match="causal-LM adapter"):
        train(_rm_config(tmp_path, f"model.adapter={lm}", "train.max_steps=1", f"output.dir={tmp_path / 'rm2'}"))


def test_freeze_trains_the_score_head_too(tmp_path):
    from chatforge.training.model_setup import prepare_model

    cfg = _rm_config(tmp_path, "peft.finetuning=freeze", "peft.freeze_layers=1")
    tm = prepare_model(cfg, head="score")
    trained = {n for n, p in tm.model.named_parameters() if p.requires_grad}
    assert "score.weight" in trained and any(n.startswith("model.layers.1.") for n in trained)
    assert not any(n.startswith("model.layers.0.") for n in trained)
