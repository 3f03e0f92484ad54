"""Bad configs through the real CLI (`chatforge train` and `data clean --config`): every case is one clean error
naming the line or the dotted key, raised before any model or data is loaded; bombs are refused in milliseconds."""

from __future__ import annotations

import time

import pytest
from corpus import CONFIG_CASES, write_config
from reliability_helpers import check_clean_error


@pytest.mark.parametrize("case", CONFIG_CASES, ids=[c.id for c in CONFIG_CASES])
def test_bad_train_config_is_a_clean_error(case, tmp_path, run_cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("not a folder")
    path = write_config(tmp_path, case)
    overrides = [o.replace("{FILE}", str(tmp_path / "afile")) for o in case.overrides]
    argv = ["train", *([path] if path else []), *overrides]
    if not path and not any("=" in o for o in overrides):
        argv = ["train", "data.train=[x.jsonl]", *overrides]  # the bad override must not be taken as the file name
    t0 = time.perf_counter()
    rc, err = run_cli(*argv)
    check_clean_error(rc, err, case.expect)
    assert time.perf_counter() - t0 < 5, "config errors come before anything slow"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["afile", *([path.name] if path else [])]), (
        "a refused config writes nothing"
    )


@pytest.mark.parametrize("case_id", ["duplicate_key", "alias_bomb", "deep_yaml", "not_utf8"])
def test_bad_clean_config_is_a_clean_error(case_id, tmp_path, run_cli):
    case = next(c for c in CONFIG_CASES if c.id == case_id)
    path = write_config(tmp_path, case)
    data = tmp_path / "in.jsonl"
    data.write_text('{"text": "hello"}\n')
    rc, err = run_cli("data", "clean", "--input", data, "--output", tmp_path / "out", "--config", path)
    check_clean_error(rc, err, [str(path), *[w for w in case.expect if "." not in w]])


def test_a_bomb_in_an_override_is_refused(run_cli):
    bomb = "[" + ",".join(["&a [x,x,x,x,x,x,x,x,x,x]"] + ["*a"] * 9) + "]"
    rc, err = run_cli("train", f"model.init={bomb}")
    assert rc == 2 and "Traceback" not in err


def test_values_inside_bounds_still_load(tmp_path):
    from chatforge.training.config import load_train_config

    cfg = load_train_config(
        None,
        [
            "train.seed=4294967295",
            "model.device=cuda:3",
            "train.num_threads=8",
            "train.learning_rate=1e-4",
            "model.init={hidden_size: 96, num_attention_heads: 6, num_key_value_heads: 2}",
            f"output.dir={tmp_path / 'new'}",
        ],
    )
    assert cfg.train.seed == 2**32 - 1 and cfg.model.device == "cuda:3" and cfg.model.init["hidden_size"] == 96
