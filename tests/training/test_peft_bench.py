"""bench/peft_methods.py's pure parts: every row's overrides are a valid `chatforge train` config, and the split is
by dialogue (train, val and test share no dialogue; test holds the per-round samples)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from chatforge.training.config import load_train_config

ROOT = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("peft_methods", ROOT / "bench" / "peft_methods.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("method", ["lora", "qlora", "dora", "adalora", "prefix", "prompt", "p_tuning", "freeze"])
def test_every_row_is_a_valid_train_config(method):
    bench = _bench()
    cfg = load_train_config(None, bench.method_overrides(method, 60))
    want = {"dora": "lora"}.get(method, method)
    assert cfg.peft.finetuning == want
    if method == "adalora":
        a = cfg.peft.adalora
        assert a.tinit < 60 - a.tfinal and a.tfinal > 0  # a budget phase inside the run


def test_split_is_by_dialogue(tmp_path):
    bench = _bench()
    conv = tmp_path / "out" / "data" / "converted"
    conv.mkdir(parents=True)
    dialogues, rounds = [], []
    for d in range(50):
        dialogues.append({"messages": [], "meta": {"dialogue_id": str(d)}})
        rounds += [{"messages": [], "meta": {"dialogue_id": str(d), "round": k}} for k in range(3)]
    bench.write_jsonl(conv / "dialogues.jsonl", dialogues)
    bench.write_jsonl(conv / "rounds.jsonl", rounds)
    data = bench.prepare_data(tmp_path, tmp_path / "out", None, seed=0)

    def ids(name):
        return {json.loads(line)["meta"]["dialogue_id"] for line in data["paths"][name].read_text().splitlines()}

    train, val, test = ids("train"), ids("val"), ids("test")
    assert len(train) == 40 and len(val) == 5 and len(test) == 5
    assert not (train & val or train & test or val & test)
    assert data["test_rounds"] == 15  # every round of the 5 test dialogues
