"""stage grpo: advantages and the loss against hand computation, completion log-probs against the full logits, the
sampling masks, a toy reward that the policy learns to raise, exact resume, prompt reading and reward-spec errors."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from train_helpers import losses, run_config

from chatforge.errors import ChatforgeError, DataError
from chatforge.training import train
from chatforge.training.grpo import completion_logps, group_advantages, reduce_loss, token_losses
from chatforge.training.grpo_data import prompt_from_record, read_prompt_files
from chatforge.training.rewards import last_number, load_rewards, number_match, score


def test_group_advantages_equal_the_hand_computation():
    adv, std = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0, 3.0, 0.0, 0.0, 1.0]), 4)
    s1 = math.sqrt((4 * 0.25) / 3)  # unbiased std of [1, 0, 0, 1]
    m3 = 1.0
    s3 = math.sqrt(((3 - m3) ** 2 + 2 * (0 - m3) ** 2 + 0) / 3)
    want = [0.5 / s1, -0.5 / s1, -0.5 / s1, 0.5 / s1, 0, 0, 0, 0, 2 / s3, -1 / s3, -1 / s3, 0]
    assert adv.tolist() == pytest.approx(want, abs=1e-6)
    assert std.tolist() == pytest.approx([s1, 0.0, s3], abs=1e-6)
    unscaled, _ = group_advantages(torch.tensor([1.0, 0.0, 3.0, 0.0]), 2, scale=False)
    assert unscaled.tolist() == [0.5, -0.5, 1.5, -1.5]


def _hand_token(lp, old, ref, a, beta, eps, eps_hi):
    ratio = math.exp(lp - old)
    surrogate = min(ratio * a, min(max(ratio, 1 - eps), 1 + eps_hi) * a)
    d = ref - lp
    kl = math.exp(d) - d - 1
    return -surrogate + beta * kl, kl


def test_loss_equals_the_hand_computation_for_each_normalisation():
    lp = [[-1.0, -2.0, -0.5], [-0.3, -1.2, -4.0]]
    old = [[-1.5, -1.9, -0.5], [-0.1, -2.0, -1.0]]  # ratios e^0.5, e^-0.1, 1 / e^-0.2, e^0.8, e^-3
    ref = [[-1.1, -2.5, -0.4], [-0.3, -1.0, -1.0]]
    adv = [0.7, -1.3]
    mask = [[1, 1, 1], [1, 1, 0]]  # row 2's last token is padding (huge ratio there must not count)
    beta, eps, eps_hi = 0.1, 0.2, 0.28
    t = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    per_tok, kl, active = token_losses(t(lp), t(old), t(ref), t(adv), beta=beta, epsilon=eps, epsilon_high=eps_hi)
    hand = [
        [_hand_token(lp[i][j], old[i][j], ref[i][j], adv[i], beta, eps, eps_hi) for j in range(3)] for i in range(2)
    ]
    assert per_tok.flatten().tolist() == pytest.approx([h[0] for row in hand for h in row], rel=1e-12)
    assert kl.flatten().tolist() == pytest.approx([h[1] for row in hand for h in row], rel=1e-12)
    # clip active: row 1 token 1 (ratio e^0.5 > 1.28, A > 0) and row 2 token 3 (e^-3 < 0.8, A < 0); not row 2 token 2
    # (e^0.8 > 1.28 but A < 0: the unclipped term is the smaller one)
    assert active.tolist() == [[True, False, False], [False, False, True]]
    h = [[hand[i][j][0] * mask[i][j] for j in range(3)] for i in range(2)]
    m = t(mask)
    grpo = sum(sum(row) / sum(mrow) for row, mrow in zip(h, mask))
    assert float(reduce_loss(per_tok, m, "grpo", 3)) == pytest.approx(grpo, rel=1e-12)
    assert float(reduce_loss(per_tok, m, "bnpo", 3)) == pytest.approx(sum(map(sum, h)) / 5 * 2, rel=1e-12)
    assert float(reduce_loss(per_tok, m, "dr_grpo", 8)) == pytest.approx(sum(map(sum, h)) / 8, rel=1e-12)
    # beta = 0: no KL term at all
    no_kl, kl0, _ = token_losses(t(lp), t(old), t(ref), t(adv), beta=0.0, epsilon=eps)
    assert kl0 is None and float(no_kl[0, 1]) == pytest.approx(-math.exp(-0.1) * 0.7, rel=1e-12)


def test_on_policy_gradient_is_minus_advantage_times_grad_logp():
    lp = torch.tensor([[-1.0, -2.0], [-0.5, -0.7]], requires_grad=True)
    adv = torch.tensor([2.0, -1.0])
    per_tok, _, _ = token_losses(lp, lp.detach(), None, adv, beta=0.0, epsilon=0.2)
    reduce_loss(per_tok, torch.ones(2, 2), "grpo", 2).backward()
    assert lp.grad.tolist() == [[-1.0, -1.0], [0.5, 0.5]]  # -A / tokens-per-completion


def test_completion_logps_match_the_full_logits(tiny_model):
    torch.manual_seed(0)
    ids = torch.randint(3, 500, (2, 9))
    attn = torch.ones_like(ids)
    attn[1, :2] = 0  # left padding of row 2's prompt
    cmask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    attn[:, 5:] = cmask
    batch = dict(
        input_ids=ids,
        attention_mask=attn,
        position_ids=(attn.cumsum(1) - 1).clamp(min=0),
        completion_mask=cmask,
        prompt_width=torch.tensor(5),
    )
    got = completion_logps(tiny_model, batch, temperature=0.7, chunk_size=3)
    logits = tiny_model(input_ids=ids, attention_mask=attn, position_ids=batch["position_ids"]).logits.float()
    logp = torch.log_softmax(logits / 0.7, -1)[:, 4:-1].gather(2, ids[:, 5:, None]).squeeze(2)
    assert torch.allclose(got, logp * cmask, atol=1e-5)
    assert (got[1, 2:] == 0).all()


def _prompts(path: Path, n: int = 16) -> Path:
    with open(path, "w") as fh:
        for i in range(n):
            fh.write(json.dumps({"prompt": f"say something {i}", "answer": str(i)}) + "\n")
    return path


FOX = 495  # the tiny tokenizer's id of "Ġfox"


def _reward_file(tmp: Path) -> Path:
    path = tmp / "my_rewards.py"
    path.write_text(
        "def fox(prompts, completions, completion_ids, **columns):\n"
        f"    return [sum(t == {FOX} for t in ids) / max(1, len(ids)) for ids in completion_ids]\n"
        "def even(prompts, completions, completion_ids, **columns):\n"
        "    return [sum(t % 2 == 0 for t in ids) / max(1, len(ids)) for ids in completion_ids]\n"
    )
    return path


def _grpo_config(tmp: Path, *overrides: str):
    tmp.mkdir(parents=True, exist_ok=True)  # callers may pass a fresh subfolder per run
    return run_config(
        tmp,
        "train.stage=grpo",
        f"grpo.rewards=[{_reward_file(tmp)}:fox]",
        "grpo.num_generations=8",
        "grpo.max_new_tokens=16",
        "train.batch_size=2",
        *overrides,
        data=_prompts(tmp / "prompts.jsonl"),
    )


def _rows(out: Path, kind: str = "train") -> list[dict]:
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


def test_a_reward_for_one_token_raises_its_frequency(tmp_path):
    cfg = _grpo_config(
        tmp_path,
        "peft.finetuning=full",
        "grpo.beta=0",
        "train.max_steps=30",
        "train.learning_rate=1e-2",
        "train.scheduler=constant",
    )
    rows = _rows(train(cfg).output_dir)
    rewards = [r["reward"] for r in rows]
    assert sum(rewards[:5]) / 5 < 0.05  # the random model almost never says it (1 token of 512)
    assert sum(rewards[-5:]) / 5 > 0.5
    assert all(0 <= r["completion_length"] <= 16 for r in rows)


RESUME = (
    "grpo.rewards=[{tmp}/my_rewards.py:even]",
    "train.max_steps=6",
    "train.save_every=2",
    "train.save_total_limit=5",
    "train.learning_rate=5e-3",
)


@pytest.mark.parametrize(
    "settings",
    [
        ("grpo.beta=0.1", "train.grad_accum=2"),  # LoRA, adapter-disabled reference
        ("peft.finetuning=full", "grpo.beta=0.1", "grpo.num_iterations=2", "grpo.loss_type=bnpo"),  # frozen copy
    ],
    ids=["lora", "full-mu2"],
)
def test_resume_is_exact(tmp_path, settings):
    resume = [o.format(tmp=tmp_path) for o in RESUME]
    ref_out = train(_grpo_config(tmp_path, *resume, *settings)).output_dir
    want = {r["step"]: r for r in _rows(ref_out)}
    assert all(r["kl"] >= 0 for r in want.values()) and want[6]["kl"] > 0
    # a dense reward: every generation batch scores differently; with num_iterations=2 a batch serves two steps
    assert len({round(r["reward"], 6) for r in want.values()}) == (3 if "grpo.num_iterations=2" in settings else 6)
    dest = tmp_path / "resumed"
    shutil.copytree(ref_out, dest)
    shutil.rmtree(dest / "checkpoints" / "step-000006")
    (dest / "summary.json").unlink()
    result = train(_grpo_config(tmp_path, *resume, *settings, "train.resume=auto", f"output.dir={dest}"))
    assert result.summary["resumed_from"].endswith("step-000004")
    got = {r["step"]: r for r in _rows(dest)}
    assert got.keys() == want.keys() and len(got) == 6
    for k in (5, 6):  # sampled completions (so rewards) and losses continue identically
        assert got[k]["reward"] == pytest.approx(want[k]["reward"], abs=1e-9)
        assert got[k]["loss"] == pytest.approx(want[k]["loss"], abs=1e-6)
    assert losses(dest) == pytest.approx(losses(ref_out), abs=1e-6)


def test_validation_scores_greedy_completions(tmp_path):
    cfg = _grpo_config(tmp_path, "train.max_steps=2", "data.val_size=0.25", "grpo.eval_max_new_tokens=4")
    out = train(cfg).output_dir
    (ev,) = _rows(out, "eval")
    assert ev["val_count"] == 4 and ev["val_loss"] == pytest.approx(-ev["val_reward"])
    assert 0 < ev["val_completion_length"] <= 4


def test_bad_reward_specs_fail_clearly(tmp_path):
    def load(*specs, **kw):
        cfg = _grpo_config(
            tmp_path, "grpo.rewards=[" + ",".join(specs) + "]", *[f"grpo.{k}={v}" for k, v in kw.items()]
        )
        return load_rewards(cfg.grpo)

    with pytest.raises(ChatforgeError, match="not a built-in"):
        load("nosuch")
    with pytest.raises(ChatforgeError, match="cannot import module 'no_such_mod'"):
        load("no_such_mod:fn")
    with pytest.raises(ChatforgeError, match="no such file"):
        load(f"{tmp_path}/missing.py:fn")
    with pytest.raises(ChatforgeError, match="has no attribute 'nope'"):
        load(f"{_reward_file(tmp_path)}:nope")
    with pytest.raises(ChatforgeError, match="format_pattern"):
        load("format")
    with pytest.raises(ChatforgeError, match="name at least one"):
        load_rewards(_grpo_config(tmp_path, "grpo.rewards=[]").grpo)
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(ChatforgeError, match="importing .*broken.py failed: RuntimeError: boom"):
        load(f"{broken}:fn")
    bad = tmp_path / "bad_rewards.py"
    bad.write_text(
        "def short(prompts, completions, **kw):\n    return [1.0]\n"
        "def boom(prompts, completions, **kw):\n    raise KeyError('answer')\n"
        "def words(prompts, completions, **kw):\n    return ['high'] * len(completions)\n"
    )
    for name, message in [
        ("short", "reward function short returned 1 values for 2 completions"),
        ("boom", "reward function boom raised KeyError"),
        ("words", "reward function words: value 0 is str 'high', not a number"),
    ]:
        (r,) = load(f"{bad}:{name}")
        with pytest.raises(ChatforgeError, match=message):
            score([r], ["p", "p"], ["a", "b"], {})
    # the mistake also stops a run, before the model loads
    with pytest.raises(ChatforgeError, match="returned 1 values"):
        train(_grpo_config(tmp_path, f"grpo.rewards=[{bad}:short]", "train.max_steps=1"))


def test_builtin_rewards():
    assert last_number("so 3 + 4 = 7, answer: 1,234.") == 1234.0
    assert last_number("Natalia sold 48 clips.\n#### 72") == 72.0
    assert last_number("no digits") is None
    got = number_match(["q"] * 3, ["the answer is 72", "72.0 apples then 5", "none"], answer=["... #### 72"] * 3)
    assert got == [1.0, 0.0, 0.0]
    with pytest.raises(ChatforgeError, match="answer"):
        number_match(["q"], ["1"])


def test_prompts_from_each_layout_keep_their_columns(tmp_path):
    msg = prompt_from_record(
        {
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "capital of France?"},
                {"role": "assistant", "content": "Paris"},
            ],
            "answer": "Paris",
        }
    )
    assert [m.role for m in msg.conv.messages] == ["system", "user"] and msg.text == "capital of France?"
    assert msg.columns == {"answer": "Paris", "reference": "Paris"}
    alp = prompt_from_record({"instruction": "add", "input": "2 and 3", "output": "5"})
    assert alp.text == "add\n2 and 3" and alp.columns == {"output": "5"}
    gsm = prompt_from_record({"question": "how many?", "answer": "#### 4"})
    assert gsm.text == "how many?" and gsm.columns == {"answer": "#### 4"}
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "ok"}) + "\n" + json.dumps({"text": "no prompt"}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl, line 2: no prompt in the record"):
        read_prompt_files([str(bad)], "raise", None, {})
    from collections import Counter

    stats = Counter()
    assert len(read_prompt_files([str(bad)], "skip", None, stats)) == 1 and sum(stats.values()) == 1


def test_config_mistakes_are_reported(tmp_path):
    from chatforge.config import ConfigError

    with pytest.raises(ConfigError, match="2 weights for 1 reward functions"):
        _grpo_config(tmp_path, "grpo.reward_weights=[1.0,2.0]")
    with pytest.raises(ConfigError, match="num_generations"):
        _grpo_config(tmp_path, "grpo.num_generations=1")
    with pytest.raises(ChatforgeError, match="save_every=3 must be a multiple of grpo.num_iterations=2"):
        train(_grpo_config(tmp_path, "grpo.num_iterations=2", "train.save_every=3"))
    with pytest.raises(ChatforgeError, match="packed"):
        train(_grpo_config(tmp_path, "train.batching=packed"))


def test_grounded_qa_reward_wants_a_refusal_exactly_when_unanswerable(tmp_path):
    from chatforge.training.rewards import grounded_qa

    replies = ["The mayor is Ann Lee.", "I can't tell from the context.", "It is Bob.", "The context does not say."]
    answer = ["Ann Lee", "Ann Lee", None, None]
    assert grounded_qa(["q"] * 4, replies, answer=answer) == [1.0, 0.0, 0.0, 1.0]
    # from chatforge's demo JSONL: the labels sit under meta, the reference reply is the dropped assistant turn
    path = tmp_path / "qa.jsonl"
    rec = {
        "messages": [
            {"role": "user", "content": "Context: ...\n\nQuestion: who?"},
            {"role": "assistant", "content": "x"},
        ],
        "meta": {"answer": None, "kind": "unanswerable"},
    }
    path.write_text(json.dumps(rec) + "\n")
    (p,) = read_prompt_files([str(path)], "raise", None, {})
    assert p.columns == {"answer": None, "kind": "unanswerable", "reference": "x"}
    assert grounded_qa(["q"], ["Sorry, the context doesn't contain that information."], answer=[None]) == [1.0]
    with pytest.raises(ChatforgeError, match="grounded_qa needs"):
        grounded_qa(["q"], ["a"])


def test_gradient_checkpointing_keeps_the_losses(tmp_path):
    """The memory switch for large rollout batches (bench/refuse_runs.py --grpo-set train.gradient_checkpointing=true)
    recomputes activations in the backward; the samples, losses and updates stay the same."""
    common = ("grpo.beta=0.1", "train.max_steps=3", "train.learning_rate=5e-3", "peft.dropout=0")
    plain = losses(train(_grpo_config(tmp_path / "plain", *common)).output_dir)
    ckpt = losses(train(_grpo_config(tmp_path / "ckpt", *common, "train.gradient_checkpointing=true")).output_dir)
    assert plain.keys() == ckpt.keys() and len(plain) == 3
    for step in plain:
        assert abs(plain[step] - ckpt[step]) < 1e-5, (step, plain[step], ckpt[step])
