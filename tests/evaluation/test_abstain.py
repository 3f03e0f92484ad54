"""Calibrated abstention: the refusal score equals the model's own probabilities, the threshold meets the target
false-refusal rate, decisions follow the score, and `chatforge eval` writes calibration.json and the confusion matrix."""

from __future__ import annotations

import json
import math

import pytest

from chatforge.data.schema import Conversation, Message
from chatforge.errors import ChatforgeError
from chatforge.evaluation import abstain as A
from chatforge.evaluation import tasks as T
from chatforge.evaluation.commands import evaluate
from chatforge.evaluation.config import EvalConfig, load_eval_config
from chatforge.evaluation.loglik import score_naive
from chatforge.serving.engine import Completion, Engine
from chatforge.templates import parse_reply

REFUSALS = ["I cannot answer this from the given context.", "The context does not contain the answer."]


@pytest.fixture
def engine(tiny_tok, tiny_model):
    return Engine(tiny_model, tiny_tok, "chatml")


def qa(i: int, answerable: bool) -> Conversation:
    user = f"Context: the {'dog' if i % 2 else 'fox'} is {i}.\n\nQuestion: what is it {i}?"
    reply = f"It is {i}" if answerable else REFUSALS[i % 2]
    meta = {"answerable": answerable, "answers": [f"It is {i}"] if answerable else [], "source": "t", "line": i}
    return Conversation(
        [Message("system", "Answer or refuse."), Message("user", user), Message("assistant", reply)], meta=meta
    )


def write(path, convs):
    path.write_text("".join(json.dumps(c.to_dict()) + "\n" for c in convs))
    return path


def test_threshold_meets_the_target_and_is_the_lowest_such():
    answerable = [0.1 * k for k in range(20)]  # 0.0 .. 1.9
    unanswerable = [1.0 + 0.1 * k for k in range(10)]
    for target in (0.0, 0.05, 0.1, 0.25, 0.5):
        t = A.threshold_for(answerable, target)
        r = A.rates(answerable, unanswerable, t)
        assert r["false_refusal_rate"] <= target + 1e-12
        # lowering the threshold to the next answerable score would refuse one answerable item too many
        lower = max((s for s in answerable if s < t), default=-math.inf)
        assert A.rates(answerable, unanswerable, lower)["false_refusal_rate"] > target
    assert A.threshold_for(answerable, 1.0) == -math.inf
    assert A.rates(answerable, unanswerable, A.threshold_for(answerable, 0.1))["refusal_recall"] == pytest.approx(0.2)
    curve = A.tradeoff_curve(answerable, unanswerable)
    recalls = [row["refusal_recall"] for row in curve]
    assert recalls == sorted(recalls) and curve[-1]["refusal_recall"] == 1.0
    with pytest.raises(ChatforgeError, match="answerable"):
        A.threshold_for([], 0.1)


def test_openings_are_disjoint_prefixes(tiny_tok):
    replies = ["I cannot answer.", "I cannot answer this.", "The context does not say."]
    ops = A.refusal_openings(replies, tiny_tok, 3)
    assert len(ops) == len({tuple(o) for o in ops}) and all(1 <= len(o) <= 3 for o in ops)
    for a in ops:
        for b in ops:
            assert a is b or a != b[: len(a)]


def test_refusal_score_is_the_models_probability_of_refusing(engine, tiny_tok):
    items = T.grounded_items([qa(1, True), qa(2, False)])
    ctx = T.EvalContext(engine, EvalConfig(batch_size=2))
    ops = A.refusal_openings(REFUSALS, tiny_tok, 4)
    scores = A.refusal_scores(ctx, items, ops)
    for it, s in zip(items, scores):
        prompt = engine.encode(it.prompt)
        p = sum(math.exp(score_naive(engine.model, prompt, o)) for o in ops)
        assert s == pytest.approx(math.log(p) - math.log(1 - p), abs=1e-3)


class Scripted:
    """Engine double: fixed greedy replies; the real model and tokenizer for everything else."""

    def __init__(self, engine, replies):
        self.model, self.tokenizer, self.template = engine.model, engine.tokenizer, engine.template
        self.encode, self.stop_ids = engine.encode, engine.stop_ids
        self.replies = replies

    def generate(self, convs, params, batch_size=16):
        return [Completion(t, parse_reply(t, self.template), 1, 1, "stop") for t in self.replies[: len(convs)]]


def test_decisions_follow_the_score(engine, monkeypatch):
    items = T.grounded_items([qa(1, True), qa(2, True), qa(3, False), qa(4, False)])
    greedy = ["It is 1", "I cannot answer this from the given context.", "It is 3", "The context does not say."]
    scores = [-2.0, -1.0, 1.0, 2.0]  # threshold 0: items 3 and 4 refused, 1 and 2 answered
    cal = {"threshold": 0.0, "target_false_refusal": 0.1, "openings": [{"ids": [1, 2]}], "refusal_reply": REFUSALS[0]}
    monkeypatch.setattr(A, "load_or_fit", lambda ctx: cal)
    monkeypatch.setattr(A, "refusal_scores", lambda ctx, its, ops: scores[: len(its)])
    monkeypatch.setattr(A, "forced_answers", lambda ctx, its, ops: [f"It is {it.source.split(':')[1]}" for it in its])
    res = A.run_calibrated(items, T.EvalContext(Scripted(engine, greedy), EvalConfig()))
    preds = [r["prediction"] for r in res.predictions]
    assert preds == ["It is 1", "It is 2", REFUSALS[0], "The context does not say."]
    assert res.details["flips"] == {"refusal -> answer": 1, "answer -> refusal": 1}
    assert res.metrics["exact_match"] == 1.0 and res.metrics["refusal_recall"] == 1.0
    assert res.metrics["false_refusal_rate"] == 0.0
    assert res.details["confusion"] == {
        "answerable": {"answered_correct": 2, "answered_wrong": 0, "refused": 0},
        "unanswerable": {"refused": 2, "answered": 0},
    }
    assert res.details["greedy_confusion"]["answerable"]["refused"] == 1
    assert res.details["greedy_metrics"]["refusal_recall"] == 0.5


def test_eval_fits_writes_calibration_and_reuses_it(engine, tmp_path):
    val = write(tmp_path / "val.jsonl", [qa(i, i % 2 == 0) for i in range(24)])
    test = write(tmp_path / "test.jsonl", [qa(100 + i, i % 3 != 0) for i in range(9)])
    base = [
        f"data.val=[{test}]",
        "eval.tasks=[grounded_qa,grounded_qa_calibrated]",
        f"eval.calibration_data=[{val}]",
        "eval.target_false_refusal=0.25",
        "eval.max_new_tokens=4",
        "eval.charts=false",
    ]
    out, report = evaluate(load_eval_config(None, [*base, f"output.dir={tmp_path / 'a'}"]), engine=engine)
    cal = json.loads((out / "calibration.json").read_text())
    assert cal["calibration_items"] == {"answerable": 12, "unanswerable": 12, "left_out_too_long": 0}
    assert cal["fitted"]["false_refusal_rate"] <= 0.25
    assert cal["refusal_reply"] in REFUSALS and cal["openings"]
    task = report["tasks"]["grounded_qa_calibrated"]
    t = float(task["details"]["threshold"])
    assert t == float(cal["threshold"])
    for row in (json.loads(x) for x in (out / "predictions_grounded_qa_calibrated.jsonl").read_text().splitlines()):
        if row["refusal_score"] > t:
            assert row["refused"]
    conf = task["details"]["confusion"]
    assert sum(conf["answerable"].values()) == task["details"]["answerable"] == 6
    assert sum(conf["unanswerable"].values()) == 3
    md = (out / "report.md").read_text()
    assert "Confusion matrix" in md and "Trade-off" in md
    assert "confusion" in report["tasks"]["grounded_qa"]["details"]
    # Reusing the file gives the same threshold and the same decisions without fitting again.
    cfg = load_eval_config(
        None,
        [
            *base[:2],
            f"eval.calibration={out / 'calibration.json'}",
            "eval.max_new_tokens=4",
            "eval.charts=false",
            f"output.dir={tmp_path / 'b'}",
        ],
    )
    _, again = evaluate(cfg, engine=engine)
    assert again["tasks"]["grounded_qa_calibrated"]["metrics"] == task["metrics"]
    assert not (tmp_path / "b" / "calibration.json").exists()


def test_missing_calibration_inputs_fail_before_loading(tmp_path):
    data = write(tmp_path / "t.jsonl", [qa(1, True)])
    cfg = load_eval_config(
        None, [f"data.val=[{data}]", "eval.tasks=[grounded_qa_calibrated]", f"output.dir={tmp_path / 'o'}"]
    )
    with pytest.raises(ChatforgeError, match="eval.calibration_data"):
        evaluate(cfg, engine=object())
    cfg.eval.calibration = str(tmp_path / "nope.json")
    with pytest.raises(ChatforgeError, match="not a file"):
        evaluate(cfg, engine=object())
    only_answerable = write(tmp_path / "v.jsonl", [qa(1, True), qa(2, True)])
    cfg.eval.calibration, cfg.eval.calibration_data = None, [str(only_answerable)]
    with pytest.raises(ChatforgeError, match="no unanswerable item"):
        evaluate(cfg, engine=_tiny_engine())


def _tiny_engine():
    from chatforge.models.tiny import tiny_llama, tiny_tokenizer

    tok = tiny_tokenizer()
    return Engine(tiny_llama(len(tok)), tok, "chatml")
