"""stage kto: the loss and KL estimate against a hand computation, the mismatched KL rows, data (labels, LLaMA-Factory
kto format, pairs split), a short run that learns a held-out preference (LoRA and full), and exact resume."""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from pathlib import Path

import pytest
import torch
from train_helpers import WORDS, assert_resume_is_exact, run_config

from chatforge.data.schema import Conversation, Message, PreferencePair
from chatforge.errors import ChatforgeError, DataError
from chatforge.training import train
from chatforge.training.kto import KtoExample, KtoObjective, kl_estimate, kto_batch, kto_examples, kto_losses
from chatforge.training.preference import sequence_logps


def _sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_loss_and_kl_equal_the_hand_computation():
    f = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    policy, ref = f([-3.0, -5.0, -2.0]), f([-3.4, -4.5, -2.5])
    kl = kl_estimate(f([-6.0, -7.0, -4.0]), f([-6.3, -7.1, -4.5]))
    assert float(kl) == pytest.approx((0.3 + 0.1 + 0.5) / 3, rel=1e-12)
    assert float(kl_estimate(f([-6.0]), f([-5.0]))) == 0.0  # clamped at 0
    beta, wd, wu = 0.5, 1.0, 1.5
    desirable = torch.tensor([True, False, True])
    got, signed = kto_losses(policy, ref, kl, desirable, beta=beta, desirable_weight=wd, undesirable_weight=wu)
    z0 = 0.3
    h = [0.4, -0.5, 0.5]
    want = [
        wd * (1 - _sig(beta * (h[0] - z0))),
        wu * (1 - _sig(beta * (z0 - h[1]))),
        wd * (1 - _sig(beta * (h[2] - z0))),
    ]
    assert got.tolist() == pytest.approx(want, rel=1e-12)
    assert signed.tolist() == pytest.approx([beta * (h[0] - z0), -beta * (h[1] - z0), beta * (h[2] - z0)], rel=1e-12)


def test_kl_rows_pair_each_prompt_with_the_next_reply():
    ex = [KtoExample([1, 2], [10, 11], [10, 11], True), KtoExample([3], [20], [20], False)]
    b = kto_batch(ex, [0, 1], pad_id=0, max_length=16)
    rows = [[t for t, m in zip(r, mk) if m] for r, mk in zip(b["input_ids"].tolist(), b["attention_mask"].tolist())]
    assert rows == [[1, 2, 10, 11], [3, 20], [1, 2, 20], [3, 10, 11]]
    assert b["labels"][2].tolist()[:3] == [-100, -100, 20]
    assert b["kto_desirable"].tolist() == [True, False]


def test_objective_equals_the_hand_computation_on_a_tiny_batch(tiny_tok, tiny_model):
    """The full objective with a frozen reference: policy / reference log-probs recomputed independently."""
    import copy

    records = [
        Conversation([Message("user", "reverse: fox dog"), Message("assistant", "dog fox")], meta={"kto_label": True}),
        Conversation([Message("user", "hello"), Message("assistant", "lazy brown")], meta={"kto_label": False}),
        Conversation([Message("user", "capital"), Message("assistant", "Paris")], meta={"kto_label": True}),
    ]
    ex = kto_examples(records, tiny_tok, "chatml", mask="all_assistant", max_length=64, stats=Counter())
    ref_model = copy.deepcopy(tiny_model)
    with torch.no_grad():
        for p in tiny_model.parameters():
            p.add_(torch.randn_like(p) * 0.02)  # the policy has moved away from the reference
    batch = kto_batch(ex, [0, 1, 2], tiny_tok.pad_token_id, 64)
    obj = KtoObjective(beta=0.2, desirable_weight=1.0, undesirable_weight=2.0, ref_model=ref_model)
    with torch.no_grad():
        loss, metrics = obj(tiny_model, batch)
        rows = {k: v for k, v in batch.items() if k != "kto_desirable"}
        pol = sequence_logps(tiny_model, rows)[0].tolist()
        ref = sequence_logps(ref_model, rows)[0].tolist()
    z0 = max(0.0, sum(pol[i] - ref[i] for i in range(3, 6)) / 3)
    want = 0.0
    for i, good in enumerate([True, False, True]):
        h = pol[i] - ref[i]
        want += (1 - _sig(0.2 * (h - z0))) if good else 2.0 * (1 - _sig(0.2 * (z0 - h)))
    assert float(loss) == pytest.approx(want, rel=1e-5)
    assert float(metrics["kl"]) / 3 == pytest.approx(z0, abs=1e-6)


def test_data_labels_pairs_and_errors(tiny_tok):
    pair = PreferencePair(
        Conversation([Message("user", "q")]), Message("assistant", "good"), Message("assistant", "bad")
    )
    stats = Counter()
    ex = kto_examples([pair], tiny_tok, "chatml", mask="all_assistant", max_length=64, stats=stats)
    assert [e.desirable for e in ex] == [True, False]
    assert tiny_tok.decode(ex[0].reply).startswith("good") and tiny_tok.decode(ex[1].reply).startswith("bad")
    unlabeled = Conversation([Message("user", "q"), Message("assistant", "a")], meta={"file": "x.jsonl"})
    with pytest.raises(DataError, match="true/false label"):
        kto_examples([unlabeled], tiny_tok, "chatml", mask="all_assistant", max_length=64, stats=stats)


def write_kto_data(path: Path, n: int, seed: int) -> Path:
    """Unpaired, labelled: replies opening with 'Paris' are desirable, with 'Berlin' undesirable (LLaMA-Factory's
    kto layout: `messages` + boolean `label`)."""
    rng = random.Random(seed)
    with open(path, "w") as fh:
        for _ in range(n):
            words = " ".join(rng.choice(WORDS[:4]) for _ in range(rng.randint(2, 6)))
            good = rng.random() < 0.5
            rec = {
                "messages": [
                    {"role": "user", "content": "answer: " + words},
                    {"role": "assistant", "content": ("Paris " if good else "Berlin ") + words},
                ],
                "label": good,
            }
            fh.write(json.dumps(rec) + "\n")
    return path


def _kto_config(tmp: Path, *overrides: str):
    data = write_kto_data(tmp / "kto.jsonl", 64, 0)
    return run_config(tmp, "train.stage=kto", "train.batch_size=4", *overrides, data=data)


@pytest.mark.parametrize(
    "settings",
    [
        ["kto.beta=1.0", "train.learning_rate=1e-2"],
        ["kto.beta=1.0", "peft.finetuning=full", "train.learning_rate=1e-3"],
    ],
    ids=["lora", "full"],
)
def test_a_short_kto_run_learns_a_held_out_preference(tmp_path, settings):
    cfg = _kto_config(
        tmp_path, "data.val_size=0.5", "train.max_steps=16", "train.eval_every=4", "train.scheduler=constant", *settings
    )
    out = train(cfg).output_dir
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r["kind"] == "eval"]
    assert {"kl", "margin", "accuracy"} <= set(next(r for r in rows if r["kind"] == "train"))
    first, last = evals[0], evals[-1]
    assert last["val_count"] == 32
    # Untrained, policy = reference: every loss is exactly 1 - s(0) = 0.5 and accuracy (reward sign) is 0.
    assert last["val_accuracy"] > 0.8  # chance is 0.5
    assert last["val_margin"] > first["val_margin"] and last["val_loss"] < first["val_loss"] < 0.5
    assert json.loads((out / "summary.json").read_text())["stage"] == "kto"


def test_llamafactory_kto_demo_reads(shared_data, tmp_path):
    """LLaMA-Factory's kto_en_demo.json through its dataset_info.json: both labels present, a step trains."""
    demo = shared_data / "llamafactory_demo"
    cfg = run_config(
        tmp_path,
        "train.stage=kto",
        "data.train=[kto_en_demo]",
        f"data.dataset_info={demo / 'dataset_info.json'}",
        f"data.dataset_dir={demo}",
        "data.max_samples=16",
        "data.val_size=0",
        "train.max_steps=1",
        data=demo / "kto_en_demo.json",
    )
    result = train(cfg)
    notes = " ".join(result.summary["data_notes"])
    assert "desirable" in notes and result.summary["steps"] == 1


def test_batch_size_one_is_refused(tmp_path):
    with pytest.raises(ChatforgeError, match="batch_size must be >= 2"):
        train(_kto_config(tmp_path, "train.batch_size=1"))


RESUME = [
    "peft.dropout=0.1",
    "train.warmup_steps=2",
    "train.max_steps=9",
    "train.save_every=3",
    "train.save_total_limit=5",
]


@pytest.mark.parametrize("settings", [["peft.finetuning=lora"], ["peft.finetuning=full"]], ids=["lora", "full"])
def test_resume_is_exact(tmp_path, settings):
    assert_resume_is_exact(_kto_config, tmp_path, *RESUME, *settings, steps=9, resume_at=6)


@pytest.mark.parametrize(
    "rec",
    [
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "kto_tag": False},
        {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}], "label": False},
        {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}], "kto_tag": False},
    ],
    ids=["openai-kto_tag", "sharegpt-label", "sharegpt-kto_tag"],
)
def test_label_keys_are_read_in_every_chat_layout(tmp_path, rec):
    from chatforge.data.readers import read_records

    path = tmp_path / "kto.jsonl"
    path.write_text(
        json.dumps(rec)
        + "\n"
        + json.dumps({**rec, next(k for k in rec if k != "messages" and k != "conversations"): True})
        + "\n"
    )
    records = list(read_records(path).records)
    assert [r.meta["kto_label"] for r in records] == [False, True]
