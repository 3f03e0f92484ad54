"""LLaMA-Factory training YAMLs: recognised, every key mapped or listed with a reason, the converted YAML is a valid
chatforge run config, and the Llama-3 LoRA SFT example trains through chatforge."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from chatforge.cli import main as cli
from chatforge.config_llamafactory import from_llamafactory, is_llamafactory_config
from chatforge.errors import ChatforgeError, NotSupportedError
from chatforge.training.config import load_train_config

# LLaMA-Factory's examples/train_lora/llama3_lora_sft.yaml, as its documentation lays it out.
LLAMA3_LORA_SFT = """\
### model
model_name_or_path: meta-llama/Meta-Llama-3-8B-Instruct
trust_remote_code: true

### method
stage: sft
do_train: true
finetuning_type: lora
lora_rank: 8
lora_target: all

### dataset
dataset: identity,alpaca_en_demo
template: llama3
cutoff_len: 2048
max_samples: 1000
overwrite_cache: true
preprocessing_num_workers: 16
dataloader_num_workers: 4

### output
output_dir: saves/llama3-8b/lora/sft
logging_steps: 10
save_steps: 500
plot_loss: true
overwrite_output_dir: true
save_only_model: false
report_to: none  # choices: [none, wandb, tensorboard, swanlab, mlflow]

### train
per_device_train_batch_size: 1
gradient_accumulation_steps: 8
learning_rate: 1.0e-4
num_train_epochs: 3.0
lr_scheduler_type: cosine
warmup_ratio: 0.1
bf16: true
ddp_timeout: 180000000
resume_from_checkpoint: null
"""


def test_llama3_lora_sft_example_maps_every_key():
    lf = yaml.safe_load(LLAMA3_LORA_SFT)
    assert is_llamafactory_config(lf)
    cfg, unmapped = from_llamafactory(lf)
    assert cfg["model"] == {"name_or_path": "meta-llama/Meta-Llama-3-8B-Instruct", "trust_remote_code": True}
    assert cfg["peft"] == {"finetuning": "lora", "r": 8, "target_modules": ["all-linear"]}
    assert cfg["data"] == {
        "train": ["identity", "alpaca_en_demo"],
        "max_length": 2048,
        "max_samples": 1000,
        "dataset_info": "data/dataset_info.json",
    }
    assert cfg["template"] == {"name": "llama3"}
    assert cfg["train"] == {
        "stage": "sft",
        "log_every": 10,
        "save_every": 500,
        "tensorboard": False,
        "batch_size": 1,
        "grad_accum": 8,
        "learning_rate": 1e-4,
        "epochs": 3.0,
        "scheduler": "cosine",
        "warmup_ratio": 0.1,
        "precision": "bf16",
    }
    assert cfg["output"] == {"dir": "saves/llama3-8b/lora/sft", "overwrite": True}
    left = dict(unmapped)
    assert set(left) == {
        "do_train",
        "overwrite_cache",
        "preprocessing_num_workers",
        "dataloader_num_workers",
        "plot_loss",
        "save_only_model",
        "ddp_timeout",
    }
    assert all(reason for reason in left.values())
    assert not is_llamafactory_config({"model": {"name_or_path": "x"}, "train": {}})


def test_other_keys_and_their_reasons():
    cfg, unmapped = from_llamafactory(
        {
            "model_name_or_path": "m",
            "stage": "pt",
            "finetuning_type": "freeze",
            "freeze_trainable_layers": -3,
            "lora_target": "q_proj, v_proj",
            "dataset": "wiki_demo",
            "dataset_dir": "lf/data",
            "eval_dataset": "held",
            "val_size": 0.1,
            "lr_scheduler_type": "constant",
            "warmup_steps": 20,
            "max_steps": -1,
            "packing": True,
            "resume_from_checkpoint": True,
            "seed": 7,
            "eval_steps": 50,
            "fp16": True,
            "report_to": "wandb",
            "some_future_key": 1,
        }
    )
    assert cfg["train"]["stage"] == "pt" and cfg["train"]["batching"] == "packed"
    assert cfg["train"]["resume"] == "auto" and cfg["train"]["seed"] == 7 and cfg["data"]["seed"] == 7
    assert "max_steps" not in cfg["train"] and "warmup_steps" not in cfg["train"]
    assert cfg["peft"]["freeze_layers"] == 3 and cfg["peft"]["freeze_side"] == "first"
    assert cfg["peft"]["target_modules"] == ["q_proj", "v_proj"]
    assert cfg["data"]["dataset_info"] == str(Path("lf/data") / "dataset_info.json")
    assert cfg["data"]["val"] == ["held"] and cfg["data"]["val_size"] == 0.1
    left = dict(unmapped)
    assert "fp16" in left and "wandb" in left["report_to"] and "no chatforge equivalent" in left["some_future_key"]
    assert "no warmup" in left["warmup_steps"]
    with pytest.raises(NotSupportedError, match="stage 'ppo'"):
        from_llamafactory({"model_name_or_path": "m", "stage": "ppo"})
    with pytest.raises(NotSupportedError, match="QLoRA"):
        from_llamafactory({"model_name_or_path": "m", "quantization_bit": 4})
    with pytest.raises(ChatforgeError, match="lora_rank: expected a number"):
        from_llamafactory({"model_name_or_path": "m", "lora_rank": "eight"})


def test_config_command_writes_a_valid_chatforge_yaml(tmp_path, capsys):
    lf = tmp_path / "llama3_lora_sft.yaml"
    lf.write_text(LLAMA3_LORA_SFT)
    out = tmp_path / "run.yaml"
    assert cli(["config", "from-llamafactory", str(lf), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "7 not carried over" in printed and "plot_loss" in printed
    text = out.read_text()
    assert text.startswith("# chatforge train") and "#   ddp_timeout:" in text
    cfg = load_train_config(out)
    assert cfg.peft.r == 8 and cfg.train.grad_accum == 8 and cfg.template.name == "llama3"
    assert cli(["config", "from-llamafactory", str(tmp_path / "nope.yaml")]) == 2
    assert "not found" in capsys.readouterr().err
    plain = tmp_path / "plain.yaml"
    plain.write_text("train:\n  epochs: 1\n")
    assert cli(["config", "from-llamafactory", str(plain)]) == 2
    assert "does not look like an LLaMA-Factory" in capsys.readouterr().err


@pytest.mark.integration
def test_llamafactory_example_trains_through_chatforge(tmp_path, capsys):
    """The example, pointed at a local tiny model and a small dataset_info.json, converts and trains two steps."""
    from chatforge.models.tiny import tiny_llama, tiny_tokenizer

    model = tmp_path / "model"
    tok = tiny_tokenizer()
    tiny_llama(len(tok)).save_pretrained(model)
    tok.save_pretrained(model)
    data = tmp_path / "data"
    data.mkdir()
    rows = [{"instruction": f"say {w}", "input": "", "output": w} for w in ("hi", "yes", "no", "ok") * 4]
    (data / "alpaca_en_demo.json").write_text(json.dumps(rows))
    (data / "dataset_info.json").write_text(json.dumps({"alpaca_en_demo": {"file_name": "alpaca_en_demo.json"}}))
    lf = yaml.safe_load(LLAMA3_LORA_SFT)
    lf.update(
        model_name_or_path=str(model),
        dataset="alpaca_en_demo",
        dataset_dir=str(data),
        cutoff_len=64,
        output_dir=str(tmp_path / "out"),
        bf16=False,
        max_steps=2,
        gradient_accumulation_steps=1,
        per_device_train_batch_size=4,
    )
    (tmp_path / "lf.yaml").write_text(yaml.safe_dump(lf))
    run = tmp_path / "run.yaml"
    assert cli(["config", "from-llamafactory", str(tmp_path / "lf.yaml"), "-o", str(run)]) == 0
    assert cli(["train", str(run), "train.num_threads=1", "train.progress=false"]) == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["steps"] == 2


def test_maybe_convert_passes_chatforge_files_through(tmp_path):
    from chatforge.config_llamafactory import maybe_convert

    lf = tmp_path / "lf.yaml"
    lf.write_text(LLAMA3_LORA_SFT)
    path, unmapped = maybe_convert(lf, tmp_path)
    assert path == tmp_path / "lf.chatforge.yaml" and len(unmapped) == 7
    assert load_train_config(path).peft.r == 8
    own = tmp_path / "own.yaml"
    own.write_text("train:\n  epochs: 1\n")
    assert maybe_convert(own) == (own, [])
    assert maybe_convert(None) == (None, [])


def test_preference_stages_map_with_their_keys():
    """stage rm / dpo / kto and their pref_* / kto_* keys; ppo, an added SFT term and kto_pair are refused."""
    base = {"model_name_or_path": "m", "dataset": "dpo_en_demo", "finetuning_type": "lora"}
    cfg, unmapped = from_llamafactory(
        {**base, "stage": "dpo", "pref_beta": 0.2, "pref_loss": "simpo", "simpo_gamma": 0.7, "pref_ftx": 0}
    )
    assert cfg["train"]["stage"] == "dpo" and cfg["dpo"] == {"beta": 0.2, "loss": "simpo", "simpo_gamma": 0.7}
    assert "pref_ftx" in dict(unmapped)
    cfg, _ = from_llamafactory(
        {**base, "stage": "kto", "pref_beta": 0.3, "kto_chosen_weight": 1.0, "kto_rejected_weight": 1.5}
    )
    assert cfg["train"]["stage"] == "kto"
    assert cfg["kto"] == {"beta": 0.3, "desirable_weight": 1.0, "undesirable_weight": 1.5}
    cfg, unmapped = from_llamafactory({**base, "stage": "rm", "pref_beta": 0.1})
    assert cfg["train"]["stage"] == "rm" and "dpo" not in cfg and "stage rm" in dict(unmapped)["pref_beta"]
    with pytest.raises(NotSupportedError, match="pref_loss='kto_pair'"):
        from_llamafactory({**base, "stage": "dpo", "pref_loss": "kto_pair"})
    with pytest.raises(NotSupportedError, match="pref_ftx"):
        from_llamafactory({**base, "stage": "dpo", "pref_ftx": 0.5})
    # the converted config validates as a chatforge run config
    from chatforge.training.config import load_train_config

    cfg, _ = from_llamafactory({**base, "stage": "kto", "pref_beta": 0.3})
    flat = [f"{s}.{k}={v}" for s, kv in cfg.items() for k, v in kv.items() if not isinstance(v, list)]
    run = load_train_config(None, flat)
    assert run.train.stage == "kto" and run.kto.beta == 0.3
