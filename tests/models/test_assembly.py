"""The one model assembly: every `model.*` key means the same in train, eval, chat and serve."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
from train_helpers import tiny_model_dir, write_chat_data  # noqa: E402

from chatforge.config import ModelConfig, TemplateConfig, load_config  # noqa: E402
from chatforge.errors import ChatforgeError  # noqa: E402
from chatforge.models.assembly import assemble, weights_dtype  # noqa: E402


@dataclass
class ModelConfigRun:
    model: ModelConfig = field(default_factory=ModelConfig)


def test_init_and_tokenizer_keys_build_a_fresh_llama(tmp_path):
    folder = tiny_model_dir(tmp_path)
    cfg = ModelConfig(
        name_or_path="unused-when-init-and-tokenizer-are-given",
        tokenizer=str(folder),
        init={"hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 4, "intermediate_size": 64},
        device="cpu",
    )
    parts = assemble(cfg, TemplateConfig(name="chatml"))
    assert parts.model.config.num_hidden_layers == 3 and parts.model.config.hidden_size == 32
    assert parts.template.name == "chatml"
    assert "<|im_start|>" in parts.tokenizer.chat_template  # the template's Jinja is the tokenizer's
    assert parts.model.get_input_embeddings().num_embeddings >= len(parts.tokenizer)
    assert not parts.model.training  # inference assembly


def test_eval_honours_model_init_and_tokenizer(tmp_path):
    """`chatforge eval` goes through the same assembly: a from-scratch model with a borrowed tokenizer evaluates."""
    from chatforge.evaluation.commands import evaluate
    from chatforge.evaluation.config import EvalRunConfig

    folder = tiny_model_dir(tmp_path)
    data = write_chat_data(tmp_path / "val.jsonl", n=6)
    cfg = load_config(
        None,
        [
            "model.name_or_path=scratch",
            f"model.tokenizer={folder}",
            "model.init={hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 4, intermediate_size: 64}",
            "model.device=auto",
            f"data.val=[{data}]",
            "template.name=chatml",
            "eval.tasks=[lm]",
            "eval.charts=false",
            f"output.dir={tmp_path / 'eval'}",
        ],
        EvalRunConfig,
    )
    _, report = evaluate(cfg)
    lm = report["tasks"]["lm"]
    # A random 2-layer model knows nothing: its perplexity is large but finite, over the trained tokens only.
    assert 1 < lm["metrics"]["perplexity"] < float("inf")
    assert report["run"]["model"] == "scratch"


def test_dtype_policy_on_cpu_is_fp32_unless_asked():
    cpu = torch.device("cpu")
    for purpose, method in [("infer", None), ("train", "lora"), ("train", "full")]:
        assert weights_dtype("auto", cpu, purpose=purpose, finetuning=method) == torch.float32
    assert weights_dtype("bfloat16", cpu, purpose="train", finetuning="full") == torch.bfloat16


def test_bad_device_and_missing_adapter_are_clear_errors(tmp_path):
    with pytest.raises(ChatforgeError, match="model.device"):
        load_config(None, ["model.device=tpu"], ModelConfigRun)
    with pytest.raises(ChatforgeError, match="adapter_config.json"):
        assemble(ModelConfig(name_or_path=str(tiny_model_dir(tmp_path)), adapter=str(tmp_path), device="cpu"))
