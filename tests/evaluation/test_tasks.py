"""Eval tasks on the tiny model: scoring equals the model's own loss, task rules on scripted replies, report files."""

from __future__ import annotations

import json
import math

import pytest
import torch

from chatforge.data.schema import Conversation, Message, TextDoc, ToolCall
from chatforge.errors import ChatforgeError, DataError
from chatforge.evaluation import tasks as T
from chatforge.evaluation.commands import evaluate, main
from chatforge.evaluation.config import EvalConfig, load_eval_config
from chatforge.evaluation.report import compare
from chatforge.serving.engine import Completion, Engine
from chatforge.templates import encode_conversation, parse_reply

TOOLS = [{"name": "search_hotels", "description": "find hotels", "parameters": {"type": "object", "properties": {}}}]


@pytest.fixture
def engine(tiny_tok, tiny_model):
    return Engine(tiny_model, tiny_tok, "chatml")


class ScriptedEngine:
    """Test double: replies with fixed texts (parsed by the real template parser) instead of sampling a model."""

    def __init__(self, engine, replies):
        self.model, self.tokenizer, self.template = engine.model, engine.tokenizer, engine.template
        self.replies = list(replies)
        self.prompts = []

    def generate(self, convs, params, batch_size=16):
        self.prompts += convs
        out = [self.replies.pop(0) for _ in convs]
        return [Completion(t, parse_reply(t, self.template), 1, 1, "stop") for t in out]


def _ctx(engine, **cfg):
    return T.EvalContext(engine, EvalConfig(**cfg))


def test_score_rows_equals_model_loss(engine, tiny_tok):
    conv = Conversation([Message("user", "Hello there"), Message("assistant", "Hello world! How are you?")])
    enc = encode_conversation(conv, tiny_tok, "chatml")
    short = encode_conversation(Conversation([Message("user", "Hi"), Message("assistant", "ok")]), tiny_tok, "chatml")
    (nll, n, right), _ = T.score_rows(engine.model, [(enc.input_ids, enc.trained), (short.input_ids, short.trained)], 0)
    with torch.no_grad():
        out = engine.model(torch.tensor([enc.input_ids]), labels=torch.tensor([enc.labels()]))
        logits = out.logits[0, :-1]
    targets = torch.tensor(enc.input_ids[1:])
    keep = torch.tensor(enc.trained[1:])
    assert n == int(keep.sum()) and n > 3
    assert nll / n == pytest.approx(float(out.loss), rel=1e-5)
    assert right == int((logits.argmax(-1) == targets)[keep].sum())


def test_lm_task_chat_and_text(engine):
    items = T.lm_items(
        [
            Conversation(
                [Message("user", "Hi"), Message("assistant", "Hello world!")], meta={"source": "a", "line": 1}
            ),
            TextDoc("The quick brown fox jumps over the lazy dog.", meta={"source": "b", "line": 1}),
        ]
    )
    res = T.run_lm(items, _ctx(engine))
    assert set(res.details) >= {"chat", "text"}
    total = res.details["chat"]["tokens"] + res.details["text"]["tokens"]
    assert res.details["tokens"] == total
    assert res.metrics["perplexity"] == pytest.approx(math.exp(res.metrics["loss"]))
    # random weights on a 512-token vocabulary: perplexity is near the vocabulary size, far from 1
    assert 100 < res.metrics["perplexity"] < 5000


def test_toolcall_rules_on_scripted_replies(engine):
    conv = Conversation(
        [
            Message("user", "Find a hotel in Beijing under 500"),
            Message("assistant", "", [ToolCall("search_hotels", {"city": "Beijing", "price_max": 500})]),
            Message("tool", '{"results": ["A"]}'),
            Message("assistant", "Hotel A is available."),
            Message("user", "Any with wifi?"),
            Message("assistant", "", [ToolCall("search_hotels", {"city": "Beijing", "facilities": ["wifi"]})]),
            Message("tool", '{"results": []}'),
            Message("assistant", "No hotel has wifi."),
        ],
        tools=TOOLS,
        meta={"source": "d.jsonl", "line": 1},
    )
    items = T.toolcall_items([conv])
    assert [it.source for it in items] == [f"d.jsonl:1#turn{k}" for k in (1, 3, 5, 7)]
    replies = [
        '<tool_call>{"name": "search_hotels", "arguments": {"city": "beijing", "price_max": 300}}</tool_call>',
        "Hotel A is available.",  # exact text: BLEU 100
        "Sure, let me check.",  # text where a call was due: 0
        '<tool_call>{"name": "search_hotels", "arguments": {}}</tool_call>',  # call where text was due: BLEU 0
    ]
    fake = ScriptedEngine(engine, replies)
    res = T.run_toolcall(items, _ctx(fake))
    # the prompts are the reference history up to each assistant turn
    assert [len(p.messages) for p in fake.prompts] == [1, 3, 5, 7]
    m = res.metrics
    assert m["slot_precision"] == pytest.approx((1 / 2 + 0) / 2)
    assert m["slot_recall"] == pytest.approx((1 / 2 + 0) / 2)
    assert m["slot_f1"] == pytest.approx(0.25)
    assert m["tool_name_accuracy"] == 0.5 and m["call_rate_when_due"] == 0.5
    assert m["text_bleu4"] == pytest.approx(50.0)  # (100 + 0) / 2
    assert m["call_rate_when_text_due"] == 0.5
    assert [r["error"] for r in res.predictions] == [
        "wrong_slots",
        None,
        "text_instead_of_call",
        "call_instead_of_text",
    ]
    assert res.details["slot_micro"]["precision"] == 0.5  # 1 hit of 2 predicted slots


def test_grounded_qa_items_and_scores(engine):
    recs = [
        Conversation(
            [Message("user", "Context: Paris is in France.\nQ: Where is Paris?"), Message("assistant", "In France.")],
            meta={"answers": ["France"], "source": "g", "line": 1},
        ),
        Conversation(
            [Message("user", "Context: Berlin.\nQ: Who won?"), Message("assistant", "The context does not say.")],
            meta={"source": "g", "line": 2},
        ),
        Conversation(
            [Message("user", "Context: x\nQ: y?"), Message("assistant", "z")],
            meta={"answerable": False, "source": "g", "line": 3},
        ),
    ]
    items = T.grounded_items(recs)
    assert [it.reference["answers"] for it in items] == [["France"], [], []]
    fake = ScriptedEngine(engine, ["France", "I cannot tell from the context.", "It is 42."])
    res = T.run_grounded_qa(items, _ctx(fake))
    assert res.metrics["exact_match"] == 1.0 and res.metrics["false_refusal_rate"] == 0.0
    assert res.metrics["refusal_precision"] == 1.0 and res.metrics["refusal_recall"] == 0.5
    assert [r["source"] for r in res.examples["hallucination"]] == ["g:3"]


def test_generate_requires_reference_reply():
    with pytest.raises(DataError, match="ending with the assistant"):
        T.generate_items([Conversation([Message("user", "hi")], meta={"source": "f.jsonl", "line": 4})])


def test_choice_matches_independent_loglik(engine, tiny_tok, tmp_path):
    path = tmp_path / "mc.jsonl"
    rows = [
        {"question": "Capital of France?", "choices": ["Paris", "Berlin", "Rome"], "answer": 0},
        {"question": "Capital of Germany?", "choices": ["Paris", "Berlin"], "answer": "B"},
        {"question": "2 + 2 =", "choices": ["3", "4"], "answer": "4"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = T.read_choice_file(path)
    assert [it.reference for it in items] == [0, 1, 1]
    res = T.run_choice(items, _ctx(engine))
    for pred in res.predictions:
        lls = []
        for c in pred["choices"]:
            conv = Conversation([Message("user", pred["question"]), Message("assistant", c)])
            enc = encode_conversation(conv, tiny_tok, "chatml", mask="last_assistant")
            # the option's own tokens: everything trained except the closing <|im_end|>
            end = tiny_tok.convert_tokens_to_ids("<|im_end|>")
            last = max(i for i, t in enumerate(enc.trained) if t)
            assert enc.input_ids[last] == end
            labels = [t if (m and i != last) else -100 for i, (t, m) in enumerate(zip(enc.input_ids, enc.trained))]
            with torch.no_grad():
                loss = engine.model(torch.tensor([enc.input_ids]), labels=torch.tensor([labels])).loss
            lls.append(-float(loss) * sum(x != -100 for x in labels[1:]))
        assert pred["loglik"] == pytest.approx(lls, rel=1e-4)
        assert pred["predicted"] == max(range(len(lls)), key=lls.__getitem__)
    k = sum(p["correct"] for p in res.predictions)
    assert res.metrics["accuracy"] == pytest.approx(k / 3)
    assert res.metrics["accuracy_ci_low"] <= res.metrics["accuracy"] <= res.metrics["accuracy_ci_high"]
    # few-shot puts solved examples before the question
    res1 = T.run_choice(items, _ctx(engine, num_fewshot=1))
    assert res1.details["num_fewshot"] == 1 and len(res1.predictions) == 3


def test_choice_file_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "choices": ["a", "b"], "answer": 0}\n{"question": "q", "choices": ["a"]}\n')
    with pytest.raises(DataError, match=r"line 2.*choices"):
        T.read_choice_file(bad)
    bad.write_text('{"question": "q", "choices": ["a", "b"], "answer": "c"}\n')
    with pytest.raises(DataError, match=r"line 1.*answer"):
        T.read_choice_file(bad)


def _write(path, convs):
    path.write_text("".join(json.dumps(c.to_dict(), ensure_ascii=False) + "\n" for c in convs), encoding="utf-8")


def test_evaluate_writes_report_and_compare(engine, tmp_path):
    data = tmp_path / "qa.jsonl"
    _write(
        data,
        [
            Conversation(
                [Message("user", f"Question {i}?"), Message("assistant", f"Answer {i}.")], meta={"answers": [str(i)]}
            )
            for i in range(5)
        ],
    )
    runs = []
    for name, n, tasks, charts in (("base", 3, "lm,generate,grounded_qa", "true"), ("other", 5, "generate", "false")):
        cfg = load_eval_config(
            None,
            [
                f"data.val=[{data}]",
                f"eval.tasks=[{tasks}]",
                f"eval.max_samples={n}",
                f"eval.charts={charts}",
                "eval.max_new_tokens=4",
                f"output.dir={tmp_path / name}",
            ],
        )
        out, report = evaluate(cfg, engine=engine)
        runs.append(out)
        assert report["tasks"]["generate"]["items"] == n
        for f in ("report.json", "report.md", "config.yaml", "predictions_generate.jsonl"):
            assert (out / f).is_file(), f
        assert (out / "chart_generate.png").is_file() == (charts == "true")
        preds = [json.loads(x) for x in (out / "predictions_generate.jsonl").read_text().splitlines()]
        assert len(preds) == n and {"prompt", "reference", "prediction"} <= set(preds[0])
    assert "## grounded_qa" in (runs[0] / "report.md").read_text()
    # the written config re-runs as is
    again = load_eval_config(runs[0] / "config.yaml", [])
    assert again.eval.max_samples == 3
    text, charts = compare(runs, tmp_path / "cmp")
    assert "| bleu4 |" in text and "| base | other |" in text.replace("metric | ", "")
    assert (tmp_path / "cmp" / "compare.md").is_file() and all(c.is_file() for c in charts)
    with pytest.raises(ChatforgeError, match="not empty"):
        evaluate(load_eval_config(runs[0] / "config.yaml", []), engine=engine)


def test_cli_help_and_config_errors(capsys):
    assert main(["--help"]) == 0
    assert "eval.max_samples" in capsys.readouterr().out
    with pytest.raises(ChatforgeError) as err:
        main(["eval.taks=[lm]", "eval.max_new_tokens=0"])
    assert "eval.taks" in str(err.value) and "eval.max_new_tokens" in str(err.value)
    with pytest.raises(ChatforgeError, match="data.val"):
        main(["eval.tasks=[lm]"])
    with pytest.raises(ChatforgeError, match="report.json"):
        main(["compare", "/nonexistent/run"])


@pytest.mark.integration
def test_cli_end_to_end_on_saved_tiny_model(tiny_tok, tiny_model, tmp_path, capsys):
    pytest.importorskip("chatforge.models.loading")
    model_dir = tmp_path / "tiny"
    tiny_model.save_pretrained(model_dir)
    tiny_tok.save_pretrained(model_dir)
    data = tmp_path / "d.jsonl"
    _write(data, [Conversation([Message("user", "Hi"), Message("assistant", "Hello world!")])])
    rc = main(
        [
            f"model.name_or_path={model_dir}",
            "template.name=chatml",
            f"data.val=[{data}]",
            "eval.tasks=[lm,generate]",
            "eval.max_new_tokens=4",
            f"output.dir={tmp_path / 'run'}",
        ]
    )
    assert rc == 0 and (tmp_path / "run" / "report.json").is_file()


def test_data_max_samples_takes_first_records(engine, tmp_path):
    data = tmp_path / "d.jsonl"
    _write(data, [Conversation([Message("user", f"Q{i}"), Message("assistant", f"A{i}")]) for i in range(4)])
    cfg = load_eval_config(
        None,
        [
            f"data.val=[{data}]",
            "data.max_samples=2",
            "eval.tasks=[lm]",
            "eval.charts=false",
            f"output.dir={tmp_path / 'o'}",
        ],
    )
    _, report = evaluate(cfg, engine=engine)
    rows = [json.loads(x) for x in (tmp_path / "o" / "predictions_lm.jsonl").read_text().splitlines()]
    assert report["tasks"]["lm"]["items"] == 2 and [r["source"].rsplit(":", 1)[1] for r in rows] == ["1", "2"]


def test_prompts_over_max_length_are_left_out_and_counted(engine, tmp_path):
    data = tmp_path / "d.jsonl"
    long_q = "word " * 300
    _write(data, [Conversation([Message("user", q), Message("assistant", "A")]) for q in ("short?", long_q)])
    cfg = load_eval_config(
        None,
        [
            f"data.val=[{data}]",
            "data.max_length=64",
            "eval.tasks=[generate]",
            "eval.max_new_tokens=2",
            "eval.charts=false",
            f"output.dir={tmp_path / 'o'}",
        ],
    )
    _, report = evaluate(cfg, engine=engine)
    task = report["tasks"]["generate"]
    assert task["items"] == 1 and task["details"]["left_out_prompt_over_max_length"] == 1
