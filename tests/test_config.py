"""Run config machinery: YAML + dotted overrides, typed validation, all problems in one error, save/load round trip."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from chatforge.config import (
    ConfigError,
    DataConfig,
    ModelConfig,
    OutputConfig,
    TemplateConfig,
    format_config_help,
    load_config,
    parse_overrides,
    save_config,
)
from chatforge.errors import ChatforgeError


@dataclass
class TrainSection:
    learning_rate: float = field(default=2e-4, metadata={"min": 0.0, "max": 1.0, "help": "peak learning rate"})
    epochs: int = field(default=1, metadata={"min": 1})
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    bf16: bool = False
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    warmup_ratio: float | None = None
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass
class Run:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    template: TemplateConfig = field(default_factory=TemplateConfig)
    train: TrainSection = field(default_factory=TrainSection)
    output: OutputConfig = field(default_factory=OutputConfig)


@dataclass
class Required:
    name: str
    size: int = 1


@dataclass
class WithCheck:
    low: int = 0
    high: int = 10

    def check_config(self) -> list[tuple[str, str]]:
        return [("high", f"must be greater than low ({self.low})")] if self.high <= self.low else []


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_without_file():
    cfg = load_config(None, [], Run)
    assert cfg == Run()
    assert cfg.model.name_or_path == "smollm2-135m-instruct"
    assert cfg.data.max_length == 1024 and cfg.template.mask == "all_assistant"


def test_yaml_and_overrides(tmp_path):
    path = _write(
        tmp_path,
        "model:\n  name_or_path: ./m\n  init: {hidden_size: 32}\ndata:\n  train: [a.jsonl, b.json]\n"
        "train:\n  learning_rate: 1e-4\n  epochs: 2\n",
    )
    cfg = load_config(
        path,
        [
            "train.learning_rate=3e-5",  # PyYAML reads 1e-4 / 3e-5 as strings; float fields still take them
            "train.target_modules=[q_proj,k_proj,v_proj]",
            "train.bf16=true",
            "model.init.num_hidden_layers=4",
            "template.default_system=Note: answer briefly",  # YAML would read a mapping; str field keeps the text
            "model.adapter=2024",  # YAML would read an int
            "data.val=dev.jsonl",  # one file may be given without brackets
            "train.warmup_ratio=0.1",
        ],
        Run,
    )
    assert cfg.model.name_or_path == "./m"
    assert cfg.model.init == {"hidden_size": 32, "num_hidden_layers": 4}
    assert cfg.data.train == ["a.jsonl", "b.json"] and cfg.data.val == ["dev.jsonl"]
    assert cfg.train.learning_rate == pytest.approx(3e-5) and isinstance(cfg.train.learning_rate, float)
    assert cfg.train.epochs == 2 and cfg.train.bf16 is True
    assert cfg.train.target_modules == ["q_proj", "k_proj", "v_proj"]
    assert cfg.template.default_system == "Note: answer briefly"
    assert cfg.model.adapter == "2024"
    assert cfg.train.warmup_ratio == pytest.approx(0.1)


def test_yaml_float_string_in_file(tmp_path):
    cfg = load_config(_write(tmp_path, "train:\n  learning_rate: 5e-5\n"), [], Run)
    assert cfg.train.learning_rate == pytest.approx(5e-5)


def test_override_null_and_section_value():
    cfg = load_config(None, ["template.name=null", "output={dir: out/x, overwrite: true}"], Run)
    assert cfg.template.name is None
    assert cfg.output == OutputConfig(dir="out/x", overwrite=True)


def test_all_problems_reported_together(tmp_path):
    path = _write(
        tmp_path,
        "model:\n  dtype: float64\n  allow_pickel: true\n"
        "data:\n  max_length: 8\n  val_size: 1.0\n  on_error: ignore\n  train: 5\n"
        "train:\n  lerning_rate: 0.1\n  epochs: two\n  scheduler: cosin\n"
        "learning_rate: 0.1\n"
        "bogus_section: {}\n",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, ["train.epochs", "output.overwrite=maybe", "=3"], Run)
    err = info.value
    assert isinstance(err, ChatforgeError)
    problems = dict(err.problems)
    text = str(err)
    assert str(path) in text
    # unknown keys, with suggestions
    assert "did you mean 'allow_pickle'" in problems["model.allow_pickel"]
    assert "did you mean 'learning_rate'" in problems["train.lerning_rate"]
    assert "did you mean 'train.learning_rate'" in problems["learning_rate"]
    assert "unknown key" in problems["bogus_section"]
    # bad choices, with a suggestion where one is close
    assert "'float64' is not one of" in problems["model.dtype"]
    assert "did you mean 'cosine'" in problems["train.scheduler"]
    assert "'ignore' is not one of" in problems["data.on_error"]
    # out of range (inclusive min, exclusive max)
    assert "must be >= 16" in problems["data.max_length"]
    assert "must be < 1.0" in problems["data.val_size"]
    # wrong types
    assert "expected an integer" in problems["train.epochs"]
    assert "expected a list of strings" in problems["data.train"]
    assert "expected true/false" in problems["output.overwrite"]
    # bad override syntax
    assert sum("bad override" in m for _, m in err.problems) == 2
    assert "train.epochs" in [p for p, m in err.problems if "bad override" in m]
    assert len(err.problems) == 14, text


def test_wrong_type_inside_list_and_dict_paths(tmp_path):
    path = _write(tmp_path, "data:\n  train: [ok.json, 3]\nmodel:\n  init: [1, 2]\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, [], Run)
    paths = [p for p, _ in info.value.problems]
    assert paths == ["model.init", "data.train[1]"]


def test_missing_required_and_check_hook():
    with pytest.raises(ConfigError) as info:
        load_config(None, [], Required)
    assert info.value.problems == [("name", "missing required value (a string)")]
    with pytest.raises(ConfigError) as info:
        load_config(None, ["low=5", "high=5"], WithCheck)
    assert info.value.problems == [("high", "must be greater than low (5)")]
    assert load_config(None, ["low=1"], WithCheck) == WithCheck(low=1, high=10)


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml", [], Run)
    with pytest.raises(ConfigError, match=r"invalid YAML: line \d+, column \d+"):
        load_config(_write(tmp_path, "model:\n  name_or_path: [unclosed\n"), [], Run)
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(_write(tmp_path, "- a\n- b\n"), [], Run)
    # an empty file and an empty section both mean defaults
    assert load_config(_write(tmp_path, ""), [], Run) == Run()
    assert load_config(_write(tmp_path, "model:\n"), [], Run) == Run()


def test_override_into_scalar_is_refused():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["output.dir=x", "output.dir.sub=y"], Run)
    assert info.value.problems[0][0] == "output.dir"


def test_override_with_broken_list_is_an_error():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["train.target_modules=[q_proj, v_proj"], Run)
    assert info.value.problems[0][0] == "train.target_modules" and "invalid YAML" in info.value.problems[0][1]


def test_parse_overrides_tree():
    tree, problems = parse_overrides(["a.b=1", "a.c=[x, y]", "d=", "bad key=1"])
    assert problems and "bad override" in problems[0][1]
    assert tree["a"]["b"].value == 1 and tree["a"]["c"].value == ["x", "y"] and tree["d"].value is None


def test_save_load_round_trip(tmp_path):
    cfg = load_config(
        None,
        [
            "model.init={hidden_size: 48, rope_theta: 10000.0}",
            "data.train=[a.json]",
            "train.learning_rate=1e-7",
            "template.default_system='123'",
            "model.adapter=007",
            "output.dir=runs/x y",
            "train.betas=[0.8, 0.95]",
        ],
        Run,
    )
    out = save_config(cfg, tmp_path / "sub" / "config.yaml")
    again = load_config(out, [], Run)
    assert again == cfg
    assert again.model.adapter == "007" and again.train.betas == (0.8, 0.95)
    # saving the reloaded config gives the same bytes: the file is a fixed point
    assert save_config(again, tmp_path / "c2.yaml").read_text() == out.read_text()


def test_help_lists_dotted_keys():
    text = format_config_help(Run)
    assert "train.learning_rate=0.0002" in text and "peak learning rate" in text
    assert "data.max_length=1024" in text and "min 16" in text
