"""Exported folders read the same in transformers 4.4x and 5.x.

4.x is not installed here, so the first test reads the files the way 4.x does (top-level config keys, the tokenizer
class named in tokenizer_config.json, the chat template from tokenizer_config.json). The last test runs a real 4.x
when CHATFORGE_TRANSFORMERS4 names a folder holding it (e.g. `pip install --target DIR --no-deps
transformers==4.57.1 tokenizers==0.22.1 huggingface_hub==0.36.0`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, PreTrainedTokenizerFast

from chatforge.export.compat import check_folder_compatible
from chatforge.export.merge import export_merged

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello world! 1234"}]


@pytest.fixture(scope="module")
def exported(base_and_adapter, tmp_path_factory):
    base, adapter, _, _ = base_and_adapter
    return base, export_merged(str(base), str(adapter), tmp_path_factory.mktemp("compat") / "merged")


def test_files_read_the_4x_way_give_the_same_model(exported):
    base, out = exported
    assert check_folder_compatible(base), "the plain 5.x folder should need fixing"
    assert check_folder_compatible(out) == []
    config = json.loads((out / "config.json").read_text())
    assert config["rope_theta"] == config["rope_parameters"]["rope_theta"] == 100000.0
    assert config["torch_dtype"] == "float32"
    tok_config = json.loads((out / "tokenizer_config.json").read_text())
    assert tok_config["tokenizer_class"] == "PreTrainedTokenizerFast"
    # 4.x: PreTrainedTokenizerFast(tokenizer_file=..., **tokenizer_config) and the template from the same file.
    kwargs = {k: v for k, v in tok_config.items() if k not in ("tokenizer_class", "chat_template", "backend")}
    legacy = PreTrainedTokenizerFast(tokenizer_file=str(out / "tokenizer.json"), **kwargs)
    legacy.chat_template = tok_config["chat_template"]
    current = AutoTokenizer.from_pretrained(out)
    assert legacy.apply_chat_template(CHAT, tokenize=False) == current.apply_chat_template(CHAT, tokenize=False)
    text = current.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert legacy(text)["input_ids"] == current(text)["input_ids"]
    # 4.x LlamaConfig reads rope_theta from the top level; 5.x must still read the same value with both present.
    assert LlamaConfig(**{k: v for k, v in config.items() if k != "rope_parameters"}).rope_parameters["rope_theta"] == (
        100000.0
    )
    assert AutoModelForCausalLM.from_pretrained(out).config.rope_parameters["rope_theta"] == 100000.0


@pytest.mark.integration
def test_real_transformers_4_loads_the_same_logits(exported, tmp_path):
    legacy = os.environ.get("CHATFORGE_TRANSFORMERS4")
    if not legacy or not Path(legacy).is_dir():
        pytest.skip("set CHATFORGE_TRANSFORMERS4 to a folder with transformers 4.x installed (pip --target)")
    _, out = exported
    script = textwrap.dedent(
        """
        import sys, json, torch, transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer
        tok = AutoTokenizer.from_pretrained(sys.argv[1])
        model = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
        text = tok.apply_chat_template(json.loads(sys.argv[2]), tokenize=False, add_generation_prompt=True)
        ids = tok(text, return_tensors="pt").input_ids
        with torch.no_grad():
            torch.save({"version": transformers.__version__, "ids": ids, "logits": model(ids).logits}, sys.argv[3])
        """
    )
    env = {**os.environ, "PYTHONPATH": legacy}
    subprocess.run(
        [sys.executable, "-c", script, str(out), json.dumps(CHAT), str(tmp_path / "v4.pt")],
        env=env,
        check=True,
        capture_output=True,
    )
    got = torch.load(tmp_path / "v4.pt")
    assert got["version"].startswith("4.")
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok(tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True), return_tensors="pt").input_ids
    assert torch.equal(got["ids"], ids)
    with torch.no_grad():
        expected = AutoModelForCausalLM.from_pretrained(out)(ids).logits
    assert torch.allclose(got["logits"], expected, atol=1e-5)
