"""Standard benchmarks: task YAMLs, prompt building, shared-prefix log-likelihood scoring, acc/acc_norm, GSM8K exact
match, the HumanEval sandbox, and `chatforge eval` running a user's own task YAML on the tiny model."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from chatforge.errors import ChatforgeError, DataError
from chatforge.evaluation import bench as B
from chatforge.evaluation.benchmarks import builtin_names, load_spec
from chatforge.evaluation.benchmarks import docs as D
from chatforge.evaluation.benchmarks.spec import render
from chatforge.evaluation.codeexec import humaneval_program, pass_at_k, run_program
from chatforge.evaluation.commands import evaluate
from chatforge.evaluation.config import load_eval_config
from chatforge.evaluation.loglik import build_request, build_requests, encode_pair, score_naive, score_requests
from chatforge.serving.engine import Engine

OFFICIAL_COUNTS = {
    "mmlu": 14042,
    "cmmlu": 11582,
    "ceval": 1346,
    "arc_challenge": 1172,
    "arc_easy": 2376,
    "boolq": 3270,
    "commonsenseqa": 1221,
    "gsm8k": 1319,
    "humaneval": 164,
}


@pytest.fixture
def engine(tiny_tok, tiny_model):
    return Engine(tiny_model, tiny_tok, "chatml")


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------------ log-likelihood


def test_shared_prefix_scores_equal_full_sequence_scores(tiny_tok, tiny_model):
    rng = random.Random(0)
    words = ["red", "green", "the sky", "a b c d e", "Paris", "x", "seven hundred and two"]
    reqs = []
    for n in range(7):
        context = "Question: " + " ".join(rng.choice(words) for _ in range(1 + 3 * n)) + "?\nAnswer:"
        reqs.append(build_request(tiny_tok, context, [" " + rng.choice(words) for _ in range(2 + n % 3)]))
    reqs.append(build_request(tiny_tok, "", ["abc", "d"]))  # empty context: conditioned on the end-of-text token
    got = score_requests(tiny_model, reqs, pad_id=0, max_length=4096, batch_size=3)
    for req, scores in zip(reqs, got):
        want = [score_naive(tiny_model, req.context, c) for c in req.continuations]
        assert scores == pytest.approx(want, abs=1e-4)
    assert any(len(c) > 1 for r in reqs for c in r.continuations) and any(
        len(c) == 1 for r in reqs for c in r.continuations
    )


def test_encode_pair_moves_trailing_space_to_the_continuation(tiny_tok):
    ctx, cont = encode_pair(tiny_tok, "Answer: ", "Paris")
    assert ctx == tiny_tok.encode("Answer:", add_special_tokens=False)
    assert ctx + cont == tiny_tok.encode("Answer: Paris", add_special_tokens=False)


def test_batched_requests_equal_encode_pair_per_option(tiny_tok):
    items = [
        ("Answer: ", ["Paris", "Rome"]),
        ("Q: 2+2?\nA:", [" 4", " five", " 4 4"]),
        ("问题：天空是什么颜色？答案：  ", ["蓝色", "绿"]),
        ("", ["abc", "d"]),
    ]
    got = build_requests(tiny_tok, items)
    for (context, options), req in zip(items, got):
        for option, cont in zip(options, req.continuations):
            want_ctx, want_cont = encode_pair(tiny_tok, context, option)
            assert cont == want_cont
            assert req.context == (want_ctx or [tiny_tok.eos_token_id or 0])
        assert req == build_request(tiny_tok, context, options)


# ------------------------------------------------------------------------------------------------- task YAMLs


def test_every_shipped_task_parses():
    names = builtin_names()
    assert set(OFFICIAL_COUNTS) <= set(names)
    for name in names:
        spec = load_spec(name)
        assert spec.name == name and spec.metrics and spec.version


@pytest.mark.parametrize(
    "patch, key",
    [
        ({"promt": "x"}, "promt"),
        ({"prompt": "Q: {nope}"}, "prompt"),
        ({"answer": {"field": "answer", "type": "roman"}}, "answer.type"),
        ({"metrics": ["pass@1"]}, "metrics"),
        ({"choices": None}, "choices"),
        ({"prompt": "{question|shout}"}, "prompt"),
    ],
)
def test_bad_task_yaml_names_file_and_key(tmp_path, patch, key):
    import yaml

    raw = {
        "name": "mine",
        "kind": "multiple_choice",
        "test": "data.jsonl",
        "fields": {"question": "q", "answer": "a"},
        "prompt": "{question}",
        "choices": ["no", "yes"],
        "answer": {"field": "answer", "type": "bool"},
    }
    raw.update(patch)
    raw = {k: v for k, v in raw.items() if v is not None}
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    with pytest.raises(ChatforgeError, match=rf"mine.yaml: key '{key}'"):
        load_spec(str(path))


def test_template_fields_indexes_filters_and_braces():
    assert render("{{x}} {q|strip}|{c[1]}", {"q": "  hi ", "c": ["a", "b"]}) == "{x} hi|b"
    with pytest.raises(ChatforgeError, match="unknown field"):
        render("{missing}", {"q": 1})


def test_context_layout_and_answer_types(tmp_path):
    import yaml

    rows = [
        {"q": {"stem": f"q{i}", "choices": [{"label": "1", "text": "yes"}, {"label": "2", "text": "no"}]}, "k": "2"}
        for i in range(3)
    ]
    _write_jsonl(tmp_path / "t.jsonl", rows)
    spec_path = tmp_path / "t.yaml"
    spec_path.write_text(
        yaml.safe_dump(
            {
                "name": "t",
                "kind": "multiple_choice",
                "test": "t.jsonl",
                "description": "Intro.\n\n",
                "fields": {"question": "q.stem", "texts": "q.choices[].text", "labels": "q.choices[].label", "a": "k"},
                "prompt": "Question: {question}\nAnswer:",
                "choices_field": "texts",
                "answer": {"field": "a", "type": "label", "labels_field": "labels"},
            }
        )
    )
    spec = load_spec(str(spec_path))
    docs = D.load_docs(spec, tmp_path / "t.jsonl", "")
    assert [d.gold for d in docs] == [1, 1, 1] and docs[0].choices == ["yes", "no"]
    shots = D.pick_shots(docs, docs[2], 2, "first", random.Random(0))
    assert [s.source for s in shots] == [docs[0].source, docs[1].source]  # never the item itself
    ctx = D.build_context(spec, docs[2], shots)
    assert ctx == "Intro.\n\nQuestion: q0\nAnswer: no\n\nQuestion: q1\nAnswer: no\n\nQuestion: q2\nAnswer:"


def test_bad_record_is_a_data_error_with_file_and_line(tmp_path):
    spec = load_spec("arc_challenge")
    path = _write_jsonl(tmp_path / "arc.jsonl", [{"question": {"stem": "s", "choices": []}, "answerKey": "A"}])
    with pytest.raises(DataError, match=r"arc.jsonl, line 1, field 'texts': needs a list of at least 2"):
        D.load_docs(spec, path, "")
    two = [{"label": "A", "text": "x"}, {"label": "B", "text": "y"}]
    _write_jsonl(
        path,
        [{"question": {"stem": "s", "choices": two}, "answerKey": "A"}] * 2
        + [{"question": {"stem": "s", "choices": two}, "answerKey": "Z"}],
    )
    with pytest.raises(DataError, match=r"arc.jsonl, line 3, field 'answer': 'Z' does not name one of the 2"):
        D.load_docs(spec, path, "")
    _write_jsonl(path, [{"id": 1}])
    with pytest.raises(DataError, match=r"line 1, field 'question'"):
        D.load_docs(spec, path, "")


# ------------------------------------------------------------------------------------- multiple choice end to end


def _mc_task(tmp_path, n=12):
    import yaml

    rng = random.Random(1)
    words = ["cat", "dog", "a very long answer indeed", "sun", "moon and stars", "x"]
    for subject in ("alpha", "beta"):
        rows = [
            {"question": f"{subject} {i} {rng.choice(words)}?", "options": rng.sample(words, 3), "label": i % 3}
            for i in range(n)
        ]
        _write_jsonl(tmp_path / f"{subject}_test.jsonl", rows)
        _write_jsonl(tmp_path / f"{subject}_dev.jsonl", rows[:3])
    path = tmp_path / "mytask.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "mytask",
                "kind": "multiple_choice",
                "test": "{subject}_test.jsonl",
                "fewshot": "{subject}_dev.jsonl",
                "description": "About {subject_name}.\n\n",
                "fields": {"question": "question", "options": "options", "label": "label"},
                "prompt": "Q: {question}\nA:",
                "choices_field": "options",
                "answer": {"field": "label", "type": "index"},
                "num_fewshot": 1,
                "metrics": ["acc", "acc_norm"],
            }
        )
    )
    return path


def test_user_task_yaml_runs_from_chatforge_eval(tmp_path, engine, tiny_tok):
    task = _mc_task(tmp_path)
    cfg = load_eval_config(
        None,
        [f"eval.tasks=[{task}]", "eval.max_samples=null", "eval.charts=false", f"output.dir={tmp_path / 'out'}"],
    )
    out, report = evaluate(cfg, engine=engine)
    res = report["tasks"]["mytask"]
    m = res["metrics"]
    assert res["items"] == 24 and res["details"]["num_fewshot"] == 1 and res["details"]["subjects"] == 2
    preds = [json.loads(x) for x in (out / "predictions_mytask.jsonl").read_text().splitlines()]
    # acc: the most likely option; acc_norm: likelihood per character of the option (lm-eval's rule).
    for p in preds:
        assert p["predicted"] == max(range(3), key=lambda j: p["loglik"][j])
        assert p["predicted_norm"] == max(range(3), key=lambda j: p["loglik"][j] / len(p["choices"][j]))
    assert m["acc"] == pytest.approx(sum(p["predicted"] == p["gold"] for p in preds) / 24)
    assert m["acc_norm"] == pytest.approx(sum(p["predicted_norm"] == p["gold"] for p in preds) / 24)
    assert m["acc_ci_low"] <= m["acc"] <= m["acc_ci_high"]
    per = res["details"]["per_subject"]
    assert set(per) == {"alpha", "beta"} and m["acc_subject_mean"] == pytest.approx(
        (per["alpha"]["acc"] + per["beta"]["acc"]) / 2
    )
    # The scored log-likelihoods are those of the full prompt (description + 1 shot + question) + " option".
    spec = load_spec(str(task))
    docs, pools, _ = B.select_docs(spec, cfg.eval)
    ctx = D.build_context(spec, docs[5], D.pick_shots(pools[docs[5].subject], docs[5], 1, "first", random.Random(0)))
    assert ctx.startswith("About alpha.\n\nQ: ") and ctx.endswith("\nA:")
    req = build_request(tiny_tok, ctx, [" " + c for c in docs[5].choices])
    want = [score_naive(engine.model, req.context, c) for c in req.continuations]
    assert preds[5]["loglik"] == pytest.approx(want, abs=1e-4)
    assert "| alpha | 12 |" in (out / "report.md").read_text()


def test_subject_filter_and_limits(tmp_path):
    task = _mc_task(tmp_path)
    cfg = load_eval_config(None, ["eval.subjects=[beta]", "eval.max_per_subject=5", "eval.max_samples=null"]).eval
    docs, _, notes = B.select_docs(load_spec(str(task)), cfg)
    assert len(docs) == 5 and {d.subject for d in docs} == {"beta"} and notes["items_available"] == 5
    cfg = load_eval_config(None, ["eval.subjects=[gamma]"]).eval
    with pytest.raises(ChatforgeError, match="no subject 'gamma'; subjects: alpha, beta"):
        B.select_docs(load_spec(str(task)), cfg)


def test_unknown_task_name_lists_the_benchmarks(tmp_path):
    cfg = load_eval_config(None, ["eval.tasks=[mmlu_pro]", f"output.dir={tmp_path}"])
    with pytest.raises(ChatforgeError, match="benchmarks: .*gsm8k.*mmlu"):
        evaluate(cfg, engine=object())


# ------------------------------------------------------------------------------------------------------- GSM8K


def test_gsm8k_answer_extraction_and_exact_match():
    spec = load_spec("gsm8k")
    strict, flexible = spec.extract
    norm = spec.normalize
    reply = "She pays 3 * $1,200 = $3,600.\n#### 3,600.\n\nQuestion"
    assert B.extract_answer(reply, strict["regex"], strict["select"]) == "3,600."
    assert B.normalize_answer("3,600.", norm["remove"], True) == "3600"
    assert B.extract_answer("so 12 apples, then 14", flexible["regex"], flexible["select"]) == "14"
    assert B.extract_answer("no digits", strict["regex"]) == "[invalid]"
    gold = D._gold(spec, {"answer": "Step <<2*3=6>>6\n#### 1,234"}, [])
    assert B.normalize_answer(gold, norm["remove"], True) == "1234"


def test_generate_task_end_to_end_on_tiny_model(tmp_path, engine):
    import yaml

    _write_jsonl(tmp_path / "m.jsonl", [{"question": f"{i}+1?", "answer": f"ok\n#### {i + 1}"} for i in range(4)])
    spec = yaml.safe_load(load_spec("gsm8k").path.read_text())
    spec.update(
        name="mini_math", test="m.jsonl", num_fewshot=2, generation={"until": ["Question:"], "max_new_tokens": 6}
    )
    spec.pop("fewshot")
    (tmp_path / "mini.yaml").write_text(yaml.safe_dump(spec))
    cfg = load_eval_config(
        None, [f"eval.tasks=[{tmp_path / 'mini.yaml'}]", "eval.charts=false", f"output.dir={tmp_path / 'out'}"]
    )
    out, report = evaluate(cfg, engine=engine)
    res = report["tasks"]["mini_math"]
    rows = [json.loads(x) for x in (out / "predictions_mini_math.jsonl").read_text().splitlines()]
    assert res["items"] == 4 and len(rows) == 4 and res["details"]["num_fewshot"] == 2
    for r in rows:
        assert r["correct_strict"] == (
            B.normalize_answer(r["extracted_strict"], [",", "\\$", "(?s).*#### ", "\\.$"], True) == r["gold"]
        )
    assert res["metrics"]["exact_match"] == sum(r["correct_strict"] for r in rows) / 4
    assert res["details"]["generated_tokens"] <= 4 * 6


# ---------------------------------------------------------------------------------------------------- HumanEval

PROMPT = 'def add(a, b):\n    """Return a + b."""\n'
TEST = "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"


def test_code_task_is_refused_without_opt_in(tmp_path):
    cfg = load_eval_config(None, ["eval.tasks=[humaneval]", f"output.dir={tmp_path}"])
    with pytest.raises(ChatforgeError, match="eval.allow_code_execution=true"):
        evaluate(cfg, engine=object())  # refused before any model is touched
    assert not any(tmp_path.iterdir())


def test_sandbox_pass_fail_timeout_memory_network_processes():
    assert run_program(humaneval_program(PROMPT, "    return a + b\n", TEST, "add")).status == "passed"
    assert run_program(humaneval_program(PROMPT, "    return a - b\n", TEST, "add")).status == "failed"
    assert run_program("while True:\n    pass\n", timeout=1.0).status == "timeout"
    assert "MemoryError" in run_program("x = bytearray(3 * 1024**3)\n", memory_mb=256).detail
    net = run_program("import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)\n")
    assert net.status == "failed"
    proc = run_program("import subprocess\nsubprocess.run(['true'])\n")
    assert proc.status == "failed" and "disabled" in proc.detail


def test_pass_at_k():
    assert pass_at_k(1, 1, 1) == 1.0 and pass_at_k(1, 0, 1) == 0.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - math.comb(3, 2) / math.comb(5, 2))


def test_code_task_end_to_end_on_tiny_model(tmp_path, engine):
    import gzip

    rows = [{"task_id": "t/0", "prompt": PROMPT, "test": TEST, "entry_point": "add"}]
    with gzip.open(tmp_path / "he.jsonl.gz", "wt") as fh:
        fh.write(json.dumps(rows[0]) + "\n")
    import yaml

    spec = yaml.safe_load(load_spec("humaneval").path.read_text())
    spec.update(name="mini_he", test="he.jsonl.gz", generation={"until": ["\ndef"], "max_new_tokens": 4})
    (tmp_path / "he.yaml").write_text(yaml.safe_dump(spec))
    cfg = load_eval_config(
        None,
        [
            f"eval.tasks=[{tmp_path / 'he.yaml'}]",
            "eval.allow_code_execution=true",
            "eval.charts=false",
            f"output.dir={tmp_path / 'out'}",
        ],
    )
    _, report = evaluate(cfg, engine=engine)
    res = report["tasks"]["mini_he"]
    assert res["metrics"]["pass@1"] == 0.0  # a random tiny model does not write add()
    assert sum(res["details"]["status"].values()) == 1


# ------------------------------------------------------------------------------------------------ shared data


@pytest.mark.shared_data
def test_shipped_tasks_read_the_real_files_with_official_counts(shared_data):
    root = str(shared_data / "benchmarks")
    for name, count in OFFICIAL_COUNTS.items():
        spec = load_spec(name)
        files = D.find_subjects(spec, root)
        docs = [d for s, p in files.items() for d in D.load_docs(spec, p, s)]
        assert len(docs) == count, name
        if name in ("cmmlu", "ceval"):  # every subject is named in Chinese in the description, as lm-eval does
            assert set(files) <= set(spec.subject_names), name
        if spec.num_fewshot or spec.fewshot:
            subject = next(iter(files))
            assert len(D.fewshot_pool(spec, subject, root, docs)) >= max(spec.num_fewshot, 1)


@torch.no_grad()
def test_left_padding_does_not_change_scores(tiny_tok, tiny_model):
    short = build_request(tiny_tok, "Hi", [" there", " you all"])
    long = build_request(tiny_tok, "A much longer context that forces left padding of the short one", [" ok"])
    alone = score_requests(tiny_model, [short], 0, 4096)[0]
    together = score_requests(tiny_model, [short, long], 0, 4096, batch_size=2)[0]
    assert together == pytest.approx(alone, abs=1e-4)


def test_missing_benchmark_folder_is_reported_before_the_model_loads(tmp_path, monkeypatch):
    monkeypatch.delenv("CHATFORGE_BENCHMARKS", raising=False)
    cfg = load_eval_config(None, ["eval.tasks=[mmlu]", f"output.dir={tmp_path}"])
    with pytest.raises(ChatforgeError, match="set eval.benchmark_dir"):
        evaluate(cfg, engine=object())
    cfg = load_eval_config(None, ["eval.tasks=[arc_easy]", f"eval.benchmark_dir={tmp_path}", f"output.dir={tmp_path}"])
    with pytest.raises(ChatforgeError, match="no such benchmark data file"):
        evaluate(cfg, engine=object())
