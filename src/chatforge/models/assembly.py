"""The one model assembly: model, tokenizer and chat template from a run's `model` (and `template`) config section.

Every command that needs a model (train, eval, chat, serve, export, the demo) calls `assemble`, so each `model.*` key
(`name_or_path`, `adapter`, `tokenizer`, `init`, `dtype`, `device`, `allow_pickle`, `trust_remote_code`) means the
same thing everywhere. The steps, in order:

1. the tokenizer: `model.tokenizer`, else the adapter's own (training may have added marker tokens), else the model's;
2. the template: `template.name`, else the one the model's tokenizer implies (`default_template_for`), with
   `template.default_system` applied; its role markers are added to the tokenizer as special tokens and its Jinja is
   set as the tokenizer's chat template, so anything the tokenizer renders matches what trains;
3. the weights, in the dtype `weights_dtype` picks for the purpose (see there), from scratch with `model.init`;
4. embeddings grown to the tokenizer (and to an adapter saved with more rows);
5. the adapter (`model.adapter`), trainable when training continues it;
6. everything moved to `model.device` (`auto` = CUDA when present).

`head="score"` assembles a reward model instead of a causal LM: the same decoder with a scalar score head read at
the last non-pad token (transformers' `*ForSequenceClassification` with `num_labels=1`, weights `score.weight`), so
a saved reward model loads in plain transformers too. A saved reward model (full weights, or an adapter whose
`task_type` is `SEQ_CLS`) is recognised by `is_reward_model` and assembled with its score head automatically.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from chatforge.errors import ChatforgeError

Purpose = Literal["train", "infer"]
# Methods whose frozen base may live in bf16 on CUDA: only the small trained tensors need fp32 master copies.
ADAPTER_METHODS = ("lora", "dora", "qlora", "adalora", "prefix", "prompt", "p_tuning")


@dataclass
class Assembly:
    """What `assemble` returns. `added_tokens` counts marker tokens new to the tokenizer (their embeddings are new)."""

    model: Any
    tokenizer: Any
    template: Any  # chatforge.templates.ChatTemplate
    device: torch.device
    added_tokens: int
    head: str | None = None  # None: causal LM; "score": reward model (scalar score head)


def weights_dtype(dtype: str, device: torch.device, *, purpose: Purpose, finetuning: str | None = None) -> torch.dtype:
    """The dtype weights are loaded in. An explicit `model.dtype` always wins; `auto` means:

    - inference: bfloat16 on a CUDA device that supports it, else float32;
    - training an adapter (LoRA family, prompt methods) on such a device: bfloat16 for the frozen base (peft keeps
      the adapter's own weights in float32), which halves the memory of the largest tensors;
    - any other training (full, freeze, from scratch): float32 master weights, with bf16 autocast doing the maths
      on CUDA (`train.precision=auto`);
    - on CPU: float32 (bfloat16 matmuls there are ~30x slower).
    """
    from chatforge.models.loading import resolve_dtype

    if dtype != "auto":
        return resolve_dtype(dtype, device)
    bf16_ok = device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if not bf16_ok:
        return torch.float32
    if purpose == "infer" or (finetuning or "").lower() in ADAPTER_METHODS:
        return torch.bfloat16
    return torch.float32


def _choose_template(model_cfg, template_cfg, tokenizer):
    """`template.name`, or the family the tokenizer's own Jinja shows, guarded against that Jinja (see
    `templates.guard`); printed at start, so a user sees what trains."""
    import sys

    from chatforge.models.loading import EMBEDDED_NAME
    from chatforge.templates.guard import choose_template

    name = getattr(template_cfg, "name", None)
    embedded = str(model_cfg.name_or_path).strip().lower() == EMBEDDED_NAME
    if name is None and embedded and model_cfg.init is None and model_cfg.tokenizer is None:
        name = "smollm2"  # the embedded model's name says its template
    choice = choose_template(
        tokenizer,
        name,
        use_model_jinja=bool(getattr(template_cfg, "use_model_jinja", False)),
        default_system=getattr(template_cfg, "default_system", None),
        date=getattr(template_cfg, "date", None),  # Llama 3.1's "Today Date" (template.date)
        check=model_cfg.init is None,  # a model built from scratch has no template of its own to agree with
    )
    print(choice.message, file=sys.stderr)
    return choice.template


def assemble(
    model_cfg,
    template_cfg=None,
    *,
    purpose: Purpose = "infer",
    finetuning: str | None = None,
    seed: int = 0,
    prepare_template: bool = True,
    head: str | None = None,
) -> Assembly:
    """Build the model, tokenizer and template a `model` config section names (see the module docstring).

    `finetuning` is the training method (`peft.finetuning`) when `purpose="train"`; it steers the weights' dtype and
    whether `model.adapter` may be continued. `prepare_template=False` leaves the tokenizer exactly as loaded (no
    markers added, its own chat template kept): for callers that only need the weights, e.g. conversion checks.
    `head="score"` builds a reward model (see the module docstring); `head=None` does so only for a saved reward
    model, and otherwise builds the causal LM.
    """
    from chatforge.models.loading import (
        _adapter_vocab_rows,
        _check_weights,
        build_model_from_init,
        load_model,
        load_tokenizer,
        resolve_device,
    )
    from chatforge.templates import prepare_tokenizer

    device = resolve_device(model_cfg.device)
    adapter_dir = Path(model_cfg.adapter).expanduser() if model_cfg.adapter is not None else None
    if adapter_dir is not None and not (adapter_dir / "adapter_config.json").is_file():
        raise ChatforgeError(
            f"adapter {str(model_cfg.adapter)!r} not found: expected a folder with adapter_config.json"
        )
    if purpose == "train" and adapter_dir is not None and (finetuning or "").lower() not in ADAPTER_METHODS:
        raise ChatforgeError("model.adapter (continue training an adapter) works with peft.finetuning=lora only")

    if model_cfg.tokenizer is not None:
        tok_source: str | Path = model_cfg.tokenizer
    elif adapter_dir is not None and (adapter_dir / "tokenizer_config.json").is_file():
        tok_source = adapter_dir
    else:
        tok_source = model_cfg.name_or_path
    tokenizer = load_tokenizer(tok_source, trust_remote_code=model_cfg.trust_remote_code)
    if prepare_template:
        template = _choose_template(model_cfg, template_cfg, tokenizer)
        added = prepare_tokenizer(tokenizer, template)
    else:  # raw loading (conversion checks, export): the tokenizer as it is, no guard, no markers added
        from chatforge.templates import get_template
        from chatforge.templates.guard import guess_template_name

        template, added = (
            get_template(getattr(template_cfg, "name", None) or guess_template_name(tokenizer) or "chatml"),
            0,
        )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token

    if head is None and is_reward_model(model_cfg):
        head = "score"
    dtype = weights_dtype(model_cfg.dtype, device, purpose=purpose, finetuning=finetuning)
    if model_cfg.init is not None and head is not None:
        from chatforge.errors import NotSupportedError

        raise NotSupportedError("a reward model (score head) from model.init is not supported: start from a model")
    if model_cfg.init is not None:
        model = build_model_from_init(model_cfg.init, tokenizer, dtype=dtype, device=device, seed=seed)
    else:
        model = load_model(
            model_cfg.name_or_path,
            dtype=dtype,
            allow_pickle=model_cfg.allow_pickle,
            trust_remote_code=model_cfg.trust_remote_code,
            head=head,
        )
    if head is not None:
        # The score is read at the rightmost token that is not padding: the model must know the pad id.
        model.config.pad_token_id = tokenizer.pad_token_id
    rows = len(tokenizer)
    if adapter_dir is not None:
        _check_weights(adapter_dir, model_cfg.allow_pickle, what="adapter")
        rows = max(rows, _adapter_vocab_rows(adapter_dir))
    if rows > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(rows)
    if adapter_dir is not None:
        from peft import PeftModel

        trainable = purpose == "train"
        try:
            model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=trainable)
        except (OSError, ValueError, KeyError, RuntimeError) as err:
            raise ChatforgeError(f"cannot apply adapter {adapter_dir}: {type(err).__name__}: {err}") from err
    model = model.to(device)
    if purpose == "infer":
        model.eval()
    return Assembly(model=model, tokenizer=tokenizer, template=template, device=device, added_tokens=added, head=head)


def is_reward_model(model_cfg) -> bool:
    """True when `model.adapter` is a score-head adapter (peft `task_type: SEQ_CLS`) or `model.name_or_path` is a
    local folder whose config names a `*ForSequenceClassification` architecture with one label."""
    import json

    if model_cfg.adapter is not None:
        cfg_file = Path(model_cfg.adapter).expanduser() / "adapter_config.json"
        try:
            return json.loads(cfg_file.read_text()).get("task_type") == "SEQ_CLS"
        except (OSError, ValueError):
            return False
    folder = Path(str(model_cfg.name_or_path)).expanduser()
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    archs = cfg.get("architectures") or []
    labels = cfg.get("num_labels", len(cfg.get("id2label") or {}) or None)
    return any(str(a).endswith("ForSequenceClassification") for a in archs) and labels in (None, 1)


def model_config(
    name_or_path: str,
    adapter: str | None = None,
    *,
    dtype: str = "auto",
    device: str = "auto",
    tokenizer: str | None = None,
    **extra: Any,
):
    """A `ModelConfig` from plain arguments, for commands that take `--model/--adapter` flags instead of a YAML."""
    from chatforge.config import ModelConfig

    return ModelConfig(
        name_or_path=str(name_or_path),
        adapter=None if adapter is None else str(adapter),
        dtype=dtype,
        device=device,
        tokenizer=tokenizer,
        **extra,
    )
