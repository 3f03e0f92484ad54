"""`chatforge train CONFIG [k=v ...]`: runs from YAML, reports user errors in one message (exit 2), and the example
configs for the real data are valid."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from train_helpers import run_config, write_chat_data

from chatforge.cli import main as cli
from chatforge.config import config_to_dict
from chatforge.training.config import load_train_config

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("train_*.yaml"))


def _yaml(tmp_path: Path, *overrides: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(run_config(tmp_path, *overrides))))
    return path


def test_help_lists_every_option(capsys):
    assert cli(["train", "--help"]) == 0
    out = capsys.readouterr().out
    for key in ("train.learning_rate", "peft.target_modules", "train.resume", "data.val_size", "train.batching"):
        assert key in out


def test_cli_run_with_overrides(tmp_path, capsys):
    cfg = _yaml(tmp_path)
    out = tmp_path / "cli-out"
    assert cli(["train", str(cfg), "train.max_steps=2", f"output.dir={out}", "train.progress=true"]) == 0
    err = capsys.readouterr().err
    assert "step 2/2" in err and "tok/s" in err and "ETA" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2
    assert load_train_config(out / "config.yaml").train.max_steps == 2


def test_config_problems_are_reported_together(tmp_path, capsys):
    cfg = _yaml(tmp_path)
    assert cli(["train", str(cfg), "train.learning_rat=1", "train.batch_size=0", "train.scheduler=step"]) == 2
    err = capsys.readouterr().err
    assert "3 config problems" in err and "learning_rate" in err and "Traceback" not in err


def test_unsupported_method_exits_2(tmp_path, capsys):
    assert cli(["train", str(_yaml(tmp_path)), "peft.finetuning=ia3", f"output.dir={tmp_path / 'q'}"]) == 2
    err = capsys.readouterr().err
    assert "IA3" in err and "lora" in err


def test_data_errors_name_file_and_line(tmp_path, capsys):
    data = write_chat_data(tmp_path / "bad.jsonl", n=4)
    lines = data.read_text().splitlines()
    lines[2] = '{"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "x"}]}'
    data.write_text("\n".join(lines) + "\n")
    assert cli(["train", str(_yaml(tmp_path)), f"data.train=[{data}]", f"output.dir={tmp_path / 'b'}"]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl" in err and "line 3" in err and "Traceback" not in err
    missing = tmp_path / "missing.jsonl"
    assert cli(["train", str(_yaml(tmp_path)), f"data.train=[{missing}]", f"output.dir={tmp_path / 'c'}"]) == 2
    assert "missing.jsonl" in capsys.readouterr().err


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_configs_are_valid_and_show_their_command(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("# chatforge ")
    cfg = load_train_config(path)
    assert cfg.output.dir.startswith("runs/")


@pytest.mark.shared_data
def test_example_data_paths_exist(shared_data):
    from chatforge.data.llamafactory import load_dataset_info

    root = Path(__file__).resolve().parents[2]
    # examples/dataset_info.json points at ../shared/data, so its dataset_dir is the folder above the checkout.
    specs = load_dataset_info(root / "examples" / "dataset_info.json", root=root.parent)
    for name, spec in specs.items():
        assert all(f.is_file() for f in spec.files()), name
    for path in EXAMPLES:
        cfg = load_train_config(path)
        for item in cfg.data.train:
            if item not in specs and not item.startswith("data/"):  # data/ is written by `chatforge data convert`
                assert (root / item).exists(), (path.name, item)
