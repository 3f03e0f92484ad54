"""Write a saved HF folder (Llama, Mistral or Qwen2 architecture, byte-level BPE tokenizer) as one GGUF file.

Written with the `gguf` package (llama.cpp's own Python library): its tensor-name map, its writer, and its quantizers
for q8_0 / q4_0 (k-quants have no Python quantizer there, so none are offered). What goes in:

- hyper-parameters under `<arch>.*` (context length, sizes, heads, RMS-norm epsilon, RoPE base and head size);
- the weights, one tensor at a time from safetensors (peak memory stays near one tensor plus the file being written).
  llama.cpp's `llama` architecture applies RoPE to interleaved pairs while HF Llama rotates halves, so Q and K rows
  are reordered per head; Qwen2 uses the halves layout in llama.cpp too and is written as is;
- the tokenizer as `gpt2`-type BPE: tokens in id order, their types (normal / control for special tokens /
  user-defined for other added tokens / unused for padding rows), merges, bos/eos/unk/pad ids, whether BOS is added,
  the pre-tokenizer name llama.cpp splits text with (found by comparing how the tokenizer splits a probe text with
  each known scheme), the end-of-turn token of the chat template, and `tokenizer.chat_template` = the saved template,
  so llama.cpp renders exactly what was trained.

Norms and 1-D tensors stay float32, as llama.cpp expects. Tensors whose rows do not split into 32-value blocks are
written f16 in a q8_0/q4_0 file. In q4_0 files the embedding and output matrices are kept q8_0 (llama.cpp's own
quantizer likewise keeps the output matrix at higher precision).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from chatforge.errors import ChatforgeError, NotSupportedError

log = logging.getLogger(__name__)

# HF model_type -> (gguf architecture name, reorder Q/K rows for llama.cpp's interleaved RoPE)
ARCHITECTURES = {"llama": ("llama", True), "mistral": ("llama", True), "qwen2": ("qwen2", False)}

_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
_PROBE_TEXT = "Hello World! It's 2024: 1234567 apples,\n\n  tab\there 你好世界 ÄÖÜ don't I'M ok?!  \n"


def _file_types():
    from gguf import GGMLQuantizationType as Q
    from gguf import LlamaFileType as F

    # name -> (type of 2-D weights, llama.cpp file type)
    return {
        "f16": (Q.F16, F.MOSTLY_F16),
        "bf16": (Q.BF16, F.MOSTLY_BF16),
        "q8_0": (Q.Q8_0, F.MOSTLY_Q8_0),
        "q4_0": (Q.Q4_0, F.MOSTLY_Q4_0),
    }


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ChatforgeError(f"{path} not found: expected a saved HF model folder") from None


# ------------------------------------------------------------------------------------------------------- tokenizer


def _pre_tokenizer_candidates() -> dict[str, Any]:
    from tokenizers import Regex, pre_tokenizers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX as qwen2_split

    def split(regex: str):
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(regex), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )

    gpt2 = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    return {
        "gpt-2": gpt2,  # llama.cpp's name for the plain GPT-2 split (it refuses "gpt2")
        # SmolLM / StarCoder: every digit on its own, then the GPT-2 split.
        "smollm": pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), gpt2]),
        "llama-bpe": split(_LLAMA3_SPLIT),
        "qwen2": split(qwen2_split),
    }


def detect_pre_tokenizer(backend) -> str:
    """The llama.cpp pre-tokenizer name whose splitting of a probe text equals this tokenizer's."""
    if backend.pre_tokenizer is None:
        raise NotSupportedError("GGUF export needs a byte-level BPE tokenizer; this one has no pre-tokenizer")
    want = [piece for piece, _ in backend.pre_tokenizer.pre_tokenize_str(_PROBE_TEXT)]
    for name, candidate in _pre_tokenizer_candidates().items():
        if [piece for piece, _ in candidate.pre_tokenize_str(_PROBE_TEXT)] == want:
            return name
    raise NotSupportedError(
        "GGUF export: the tokenizer splits text in a way chatforge cannot name for llama.cpp (known: "
        + ", ".join(_pre_tokenizer_candidates())
        + "); convert the exported folder with llama.cpp's convert_hf_to_gguf.py instead"
    )


def _is_byte_level(state: dict) -> bool:
    """Whether tokenizer.json's pre-tokenizer (or a step of its Sequence) is ByteLevel."""
    pre = state.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    return any(step.get("type") == "ByteLevel" for step in steps)


def tokenizer_fields(folder: Path, vocab_size: int) -> dict[str, Any]:
    """Everything the GGUF needs about the tokenizer in `folder` (tokenizer.json + tokenizer_config.json)."""
    from gguf import TokenType
    from transformers import AutoTokenizer

    state = _read_json(folder / "tokenizer.json")
    model = state.get("model", {})
    # transformers 5.17 sets byte_fallback on byte-level BPE read from a GGUF: with a ByteLevel pre-tokenizer every
    # byte already has a token, so the flag never fires and the tokenizer is still byte-level BPE.
    if model.get("type") != "BPE" or (model.get("byte_fallback") and not _is_byte_level(state)):
        raise NotSupportedError(
            f"GGUF export supports byte-level BPE tokenizers (GPT-2 / Llama-3 / Qwen2 / SmolLM style); {folder} has "
            f"a {model.get('type')} model{' with byte fallback (SentencePiece style)' if model.get('byte_fallback') else ''}"
        )
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    backend = tokenizer.backend_tokenizer
    pre = detect_pre_tokenizer(backend)

    added = {t["id"]: t for t in state.get("added_tokens", [])}
    size = max(vocab_size, backend.get_vocab_size(with_added_tokens=True))
    tokens: list[str] = []
    types: list[int] = []
    for index in range(size):
        if index in added:
            tokens.append(added[index]["content"])
            types.append(TokenType.CONTROL if added[index].get("special") else TokenType.USER_DEFINED)
            continue
        piece = backend.id_to_token(index)
        if piece is None:  # embedding rows beyond the tokenizer (padded vocab)
            tokens.append(f"[PAD{index}]")
            types.append(TokenType.UNUSED)
        else:
            tokens.append(piece)
            types.append(TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]

    def token_id(token) -> int | None:
        if token is None:
            return None
        value = tokenizer.convert_tokens_to_ids(str(token))
        return value if isinstance(value, int) and value != getattr(tokenizer, "unk_token_id", None) else None

    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    with_special = tokenizer("a")["input_ids"]
    bos_id = tokenizer.bos_token_id
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default") or next(iter(template.values()))
    return {
        "tokens": tokens,
        "types": [int(t) for t in types],
        "merges": merges,
        "pre": pre,
        "bos": bos_id,
        "eos": tokenizer.eos_token_id,
        "unk": tokenizer.unk_token_id,
        "pad": tokenizer.pad_token_id,
        "add_bos": bool(bos_id is not None and len(with_special) > len(plain) and with_special[0] == bos_id),
        "add_eos": bool(len(with_special) > len(plain) and with_special[-1] == tokenizer.eos_token_id),
        "chat_template": template,
        "eot": _end_of_turn_id(template, token_id),
    }


def _end_of_turn_id(template: str | None, token_id) -> int | None:
    """Id of the chat template's end-of-turn marker (llama.cpp stops generating there)."""
    if not template:
        return None
    from chatforge.export.modelfile import find_template

    found = find_template(template)
    return token_id(found.assistant_end.strip()) if found else None


# --------------------------------------------------------------------------------------------------------- weights


def _interleave_rope_rows(weight: np.ndarray, heads: int) -> np.ndarray:
    """HF rotates the two halves of each head; llama.cpp's llama arch rotates adjacent pairs: reorder the rows."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _tensor_type(name: str, array: np.ndarray, weight_type, gguf_type: str):
    from gguf import GGMLQuantizationType as Q

    if array.ndim < 2:
        return Q.F32
    chosen = weight_type
    if gguf_type == "q4_0" and name in ("token_embd.weight", "output.weight"):
        chosen = Q.Q8_0
    if chosen in (Q.Q8_0, Q.Q4_0) and array.shape[-1] % 32:
        return Q.F16
    return chosen


def write_gguf(folder: str | Path, output: str | Path, gguf_type: str = "f16", name: str | None = None) -> Path:
    """Write the HF model folder `folder` as a GGUF file of `gguf_type` (f16, bf16, q8_0, q4_0) at `output`."""
    import gguf
    from safetensors import safe_open

    folder, output = Path(folder), Path(output)
    types = _file_types()
    if gguf_type not in types:
        raise ChatforgeError(f"unknown GGUF type {gguf_type!r}; choose one of {', '.join(types)}")
    weight_type, file_type = types[gguf_type]
    config = _read_json(folder / "config.json")
    model_type = config.get("model_type")
    if model_type not in ARCHITECTURES:
        raise NotSupportedError(
            f"GGUF export supports {', '.join(ARCHITECTURES)} models; {folder} is {model_type!r} (convert it with "
            "llama.cpp's convert_hf_to_gguf.py)"
        )
    if config.get("quantization_config"):
        raise NotSupportedError("GGUF export needs unquantized HF weights; export without --quantize")
    arch_name, interleave = ARCHITECTURES[model_type]
    arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch_name)
    rope = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    rope_theta = rope.get("rope_theta", config.get("rope_theta", 10000.0))
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "linear"):
        raise NotSupportedError(f"GGUF export: RoPE scaling {rope_type!r} is not supported (default and linear are)")
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    layers = config["num_hidden_layers"]
    tok = tokenizer_fields(folder, config["vocab_size"])

    writer = gguf.GGUFWriter(str(output), arch_name, use_temp_file=True)
    writer.add_name(name or config.get("_name_or_path") or folder.name)
    writer.add_file_type(int(file_type))
    writer.add_context_length(config.get("max_position_embeddings", 2048))
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(layers)
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(config.get("rms_norm_eps", 1e-6))
    writer.add_rope_freq_base(float(rope_theta))
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config["hidden_size"] // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    if rope_type == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    writer.add_vocab_size(len(tok["tokens"]))

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(tok["pre"])
    writer.add_token_list(tok["tokens"])
    writer.add_token_types(tok["types"])
    writer.add_token_merges(tok["merges"])
    for key, add in (
        ("bos", writer.add_bos_token_id),
        ("eos", writer.add_eos_token_id),
        ("unk", writer.add_unk_token_id),
        ("pad", writer.add_pad_token_id),
        ("eot", writer.add_eot_token_id),
    ):
        if tok[key] is not None:
            add(int(tok[key]))
    writer.add_add_bos_token(tok["add_bos"])
    writer.add_add_eos_token(tok["add_eos"])
    if tok["chat_template"]:
        writer.add_chat_template(tok["chat_template"])

    names = gguf.get_tensor_name_map(arch, layers)
    shards = sorted(folder.glob("*.safetensors"))
    if not shards:
        raise ChatforgeError(f"{folder} has no *.safetensors weights")
    for shard in shards:
        with safe_open(str(shard), framework="pt") as fh:
            for hf_name in fh.keys():
                if hf_name.endswith("rotary_emb.inv_freq"):
                    continue
                if hf_name == "lm_head.weight" and config.get("tie_word_embeddings"):
                    continue
                target = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
                if target is None:
                    raise NotSupportedError(f"GGUF export: no GGUF name for tensor {hf_name!r} of {shard.name}")
                array = fh.get_tensor(hf_name).float().numpy()
                if interleave and hf_name.endswith("q_proj.weight"):
                    array = _interleave_rope_rows(array, heads)
                elif interleave and hf_name.endswith("k_proj.weight"):
                    array = _interleave_rope_rows(array, kv_heads)
                qtype = _tensor_type(target, array, weight_type, gguf_type)
                writer.add_tensor(target, gguf.quants.quantize(array, qtype), raw_dtype=qtype)
    output.parent.mkdir(parents=True, exist_ok=True)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return output
