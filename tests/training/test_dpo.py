"""stage dpo: the five losses against hand-computed values, reply log-probs, the adapter-disabled reference, a short
run that learns a held-out preference, and exact resume (LoRA with the adapter reference, full FT with precomputed)."""

from __future__ import annotations

import json
import math
import random
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
from train_helpers import WORDS, losses, run_config

from chatforge.data.schema import Conversation, Message, PreferencePair
from chatforge.errors import ChatforgeError, DataError
from chatforge.training import train
from chatforge.training.dataset import encode_preferences
from chatforge.training.packing import pad_batch
from chatforge.training.preference import pair_losses, reference_logps, sequence_logps


def _ls(x: float) -> float:
    return -math.log1p(math.exp(-x))  # log sigmoid


# Fixed example: summed reply log-probs, token counts and reference log-probs of one pair.
PC, PR, NC, NR, RC, RR = -4.0, -6.5, 4, 5, -4.6, -6.0
BETA, LS, GAMMA = 0.3, 0.1, 0.4


def _hand(loss: str) -> tuple[float, float, float]:
    """(loss, chosen reward, rejected reward) written out from the papers' formulas."""
    h = (PC - RC) - (PR - RR)  # 0.6 - (-0.5) = 1.1
    ac, ar = PC / NC, PR / NR
    if loss == "sigmoid":
        z = BETA * h
        return -(1 - LS) * _ls(z) - LS * _ls(-z), BETA * (PC - RC), BETA * (PR - RR)
    if loss == "ipo":
        return (h - 1 / (2 * BETA)) ** 2, BETA * (PC - RC), BETA * (PR - RR)
    if loss == "hinge":
        return max(0.0, 1 - BETA * h), BETA * (PC - RC), BETA * (PR - RR)
    if loss == "orpo":
        log_odds = lambda a: math.log(math.exp(a) / (1 - math.exp(a)))  # noqa: E731
        return -ac - BETA * _ls(log_odds(ac) - log_odds(ar)), BETA * ac, BETA * ar
    z = BETA * (ac - ar) - GAMMA  # simpo
    return -(1 - LS) * _ls(z) - LS * _ls(-z), BETA * ac, BETA * ar


@pytest.mark.parametrize("loss", ["sigmoid", "ipo", "hinge", "orpo", "simpo"])
def test_each_loss_equals_the_hand_computed_value(loss):
    t = lambda v: torch.tensor([v], dtype=torch.float64)  # noqa: E731
    got, rw_c, rw_r = pair_losses(
        loss, t(PC), t(PR), t(NC), t(NR), t(RC), t(RR), beta=BETA, label_smoothing=LS, gamma=GAMMA
    )
    want = _hand(loss)
    assert float(got) == pytest.approx(want[0], rel=1e-9, abs=1e-12)
    assert (float(rw_c), float(rw_r)) == pytest.approx(want[1:], rel=1e-9)
    assert float(got) > 0


def _pair(prompt: str, chosen: str, rejected: str) -> PreferencePair:
    return PreferencePair(
        Conversation([Message("user", prompt)]), Message("assistant", chosen), Message("assistant", rejected)
    )


def _batch(tiny_tok):
    pairs = encode_preferences(
        [_pair("reverse: fox dog", "dog fox", "fox dog"), _pair("hello there", "hello world quick", "lazy")],
        tiny_tok,
        "chatml",
        mask="all_assistant",
        max_length=64,
        stats=Counter(),
    )
    return pad_batch([p.chosen for p in pairs] + [p.rejected for p in pairs], tiny_tok.pad_token_id)


def test_reply_logps_equal_the_full_logits_and_only_reply_tokens_count(tiny_tok, tiny_model):
    batch = _batch(tiny_tok)
    # the prompt is never trained: the first trained label follows the assistant header
    for row in batch["labels"]:
        assert tiny_tok.decode([t for t in row.tolist() if t != -100]).endswith("<|im_end|>")
    with torch.no_grad():
        got, n = sequence_logps(tiny_model, batch, chunk_size=3)
        logits = tiny_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    lp = logits[:, :-1].log_softmax(-1)
    y = batch["labels"][:, 1:]
    keep = y != -100
    want = (lp.gather(2, y.clamp(min=0)[..., None]).squeeze(-1) * keep).sum(1)
    assert torch.allclose(got, want, atol=1e-5)
    assert n.tolist() == keep.sum(1).tolist()


def test_reference_with_adapter_disabled_equals_the_base_model(tiny_tok, tiny_model):
    from peft import LoraConfig, get_peft_model

    batch = _batch(tiny_tok)
    with torch.no_grad():
        base, _ = sequence_logps(tiny_model, batch)
    peft_model = get_peft_model(tiny_model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # a trained-looking adapter, so the policy differs from the base
        policy, _ = sequence_logps(peft_model, batch)
    ref = reference_logps(peft_model, batch)
    assert torch.allclose(ref, base, atol=1e-6)
    assert not torch.allclose(policy, base, atol=1e-3)


def _write_pairs(path: Path, n: int, seed: int) -> Path:
    """Separable preferences: the chosen reply opens with 'Paris', the rejected with 'Berlin', on random prompts."""
    rng = random.Random(seed)
    with open(path, "w") as fh:
        for _ in range(n):
            words = " ".join(rng.choice(WORDS[:4]) for _ in range(rng.randint(2, 6)))
            rec = {
                "messages": [{"role": "user", "content": "answer: " + words}],
                "chosen": "Paris " + words,
                "rejected": "Berlin " + words,
            }
            fh.write(json.dumps(rec) + "\n")
    return path


def _dpo_config(tmp: Path, *overrides: str):
    data = _write_pairs(tmp / "pairs.jsonl", 40, 0)
    return run_config(tmp, "train.stage=dpo", "train.batch_size=4", *overrides, data=data)


@pytest.mark.parametrize(
    "settings",
    [
        ["dpo.loss=sigmoid", "dpo.beta=0.5"],
        ["dpo.loss=simpo", "dpo.beta=2.0"],
        ["dpo.loss=orpo", "dpo.beta=0.5"],
        ["dpo.loss=hinge", "dpo.beta=0.5"],
        ["dpo.loss=ipo", "dpo.beta=0.5"],
        ["dpo.loss=sigmoid", "dpo.beta=0.5", "peft.finetuning=full", "train.learning_rate=3e-4"],
    ],
    ids=["lora-sigmoid", "lora-simpo", "lora-orpo", "lora-hinge", "lora-ipo", "full-sigmoid"],
)
def test_a_short_dpo_run_learns_a_held_out_preference(tmp_path, settings):
    cfg = _dpo_config(
        tmp_path,
        "data.val_size=0.25",
        "train.max_steps=12",
        "train.eval_every=2",
        "train.scheduler=constant",
        *settings,
    )
    out = train(cfg).output_dir
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r["kind"] == "eval"]
    assert evals[0]["val_count"] == 10
    first, last = evals[0], evals[-1]
    # Before training the policy equals the reference (rewards tie at 0: accuracy 0 for the reference losses).
    assert last["val_accuracy"] >= 0.9
    assert last["val_margin"] > first["val_margin"] and last["val_margin"] > 0
    assert last["val_loss"] < first["val_loss"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stage"] == "dpo" and summary["final_val_accuracy"] == last["val_accuracy"]


RESUME = [
    "peft.dropout=0.1",
    "train.warmup_steps=2",
    "train.max_steps=12",
    "train.save_every=4",
    "train.save_total_limit=5",
]


@pytest.mark.parametrize(
    "settings", [["dpo.loss=sigmoid"], ["peft.finetuning=full", "dpo.loss=ipo"]], ids=["lora", "full"]
)
def test_resume_is_exact(tmp_path, settings):
    ref_out = train(_dpo_config(tmp_path, *RESUME, *settings)).output_dir
    want = losses(ref_out)
    dest = tmp_path / "resumed"
    shutil.copytree(ref_out, dest)
    for name in ("step-000012",):
        shutil.rmtree(dest / "checkpoints" / name)
    (dest / "summary.json").unlink()
    result = train(_dpo_config(tmp_path, *RESUME, *settings, "train.resume=auto", f"output.dir={dest}"))
    assert result.summary["resumed_from"].endswith("step-000008")
    got = losses(dest)
    assert got.keys() == want.keys() and len(got) == 12
    assert max(abs(got[k] - want[k]) for k in want) < 1e-6


def test_conversations_are_refused_with_the_record(tmp_path):
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}))
    with pytest.raises(DataError, match="preference pairs"):
        train(run_config(tmp_path, "train.stage=dpo", data=chat))
    with pytest.raises(ChatforgeError, match="packed"):
        train(_dpo_config(tmp_path, "train.batching=packed"))


def test_long_pairs_keep_the_prompt_end_and_the_reply_start(tiny_tok):
    long_prompt = "answer: " + " ".join(["fox"] * 80) + " capital"
    pair = _pair(long_prompt, " ".join(["Paris"] * 30), "Berlin")
    stats = Counter()
    (enc,) = encode_preferences([pair], tiny_tok, "chatml", mask="all_assistant", max_length=48, stats=stats)
    (c_ids, c_lab), (r_ids, r_lab) = enc.chosen, enc.rejected
    assert len(c_ids) == 48 and len(r_ids) <= 48 and sum(stats.values()) == 1
    full = encode_preferences([pair], tiny_tok, "chatml", mask="all_assistant", max_length=4096, stats=Counter())[0]
    k_c = next(i for i, t in enumerate(c_lab) if t != -100)
    k_r = next(i for i, t in enumerate(r_lab) if t != -100)
    assert k_c == k_r == 24  # the reply keeps half the budget; both sides share the prompt's last 24 tokens
    assert (
        c_ids[:k_c]
        == r_ids[:k_r]
        == full.chosen[0][next(i for i, t in enumerate(full.chosen[1]) if t != -100) - 24 :][:24]
    )
    assert "capital" in tiny_tok.decode(c_ids[:k_c])
    assert r_lab[k_r:] == full.rejected[1][-len(r_lab[k_r:]) :]  # the short reply is whole
