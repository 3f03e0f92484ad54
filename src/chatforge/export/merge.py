"""Merge a LoRA adapter into its base model, check the merge on real prompts, and save a plain HF folder.

The merge itself is peft's `merge_and_unload`, done in float32 so that a small update is not lost to bf16 rounding;
the merged weights are then cast to the output dtype (the base's own dtype unless `dtype` is given). Two checks run
before anything is written:

1. the merged model's logits on a few prompts equal base + adapter's (unmerged) logits. In float32 the largest
   difference must be <= 1e-4 (relative to the largest logit, at least 1). In bf16/fp16 the arithmetic itself moves
   logits by a few percent on a 30-layer model (measured: base + adapter run in bf16 is 2.1% off its float32 logits
   on average, and merged vs unmerged both in bf16 differ by the same amount), so there the check is that the saved
   model is no farther from the exact float32 base + adapter than base + adapter run in that dtype is, plus 1e-2
   (mean absolute difference relative to the mean absolute logit);
2. the merge changed at least one weight *in the saved dtype*. An untrained adapter (LoRA B = 0) or an update below
   bf16 resolution would otherwise ship the unchanged base silently; that is an error.

The folder is written to a temporary sibling and renamed into place, with ordinary file modes (0644 files, 0755
folders), config/tokenizer files that transformers 4.4x reads too (`compat`), and SHA256SUMS (`verify`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from chatforge.errors import ChatforgeError
from chatforge.export.compat import make_folder_compatible
from chatforge.export.verify import write_checksums

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# float32: allowed max |merged - unmerged| logit difference, relative to max(1, largest |logit|).
FLOAT32_TOLERANCE = 1e-4
# bf16/fp16: allowed excess of the saved model's mean relative error over base + adapter's own in that dtype.
LOW_PRECISION_TOLERANCE = 1e-2
PROBE_TEXTS = (
    "The capital of France is Paris, and the capital of Germany is",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
    "北京是中国的首都。请问上海的酒店价格怎么样？",
)
PROBE_QUESTION = "What can you help me with today?"
EXPORT_INFO = "chatforge_export.json"


@dataclass
class MergeReport:
    """What the merge did and how it was checked (written to chatforge_export.json)."""

    base: str
    adapter: str | None
    dtype: str
    lora_modules: int = 0
    changed_modules: int = 0  # LoRA modules whose weights differ from the base's in the saved dtype
    modules_to_save: int = 0  # whole modules the adapter replaces (e.g. embeddings after new tokens)
    max_diff_float32: float | None = None  # relative max logit difference merged vs unmerged, float32
    # bf16/fp16 only: mean relative logit error vs float32 base + adapter, of the saved model / of base + adapter
    # itself run in that dtype.
    error_saved_dtype: float | None = None
    error_unmerged_same_dtype: float | None = None
    probes: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def _dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in DTYPES.items()}[dtype]


def base_dtype(spec: str) -> torch.dtype:
    """The dtype a base model's config.json records (`dtype` in 5.x, `torch_dtype` in 4.x); float32 if none."""
    from chatforge.models.loading import resolve_model_path

    config = json.loads((resolve_model_path(spec) / "config.json").read_text(encoding="utf-8"))
    name = config.get("dtype") or config.get("torch_dtype") or "float32"
    return DTYPES.get(str(name).removeprefix("torch."), torch.float32)


def _load(spec: str, adapter: str | None, dtype: torch.dtype):
    """The one place export loads models (base + optional adapter, unmerged)."""
    from chatforge.models.loading import load_model_and_tokenizer

    return load_model_and_tokenizer(spec, adapter=adapter, dtype=dtype)


def probe_ids(tokenizer, max_tokens: int = 48) -> list[list[int]]:
    """A few short token sequences to compare models on: plain texts and, when there is one, a chat prompt."""
    probes = [tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens] for text in PROBE_TEXTS]
    if getattr(tokenizer, "chat_template", None):
        chat = tokenizer.apply_chat_template(
            [{"role": "user", "content": PROBE_QUESTION}], add_generation_prompt=True, tokenize=True
        )
        ids = chat["input_ids"] if isinstance(chat, dict) or hasattr(chat, "keys") else chat
        probes.append(list(ids)[:max_tokens])
    return [p for p in probes if p]


@torch.no_grad()
def probe_logits(model, probes: list[list[int]]) -> list[torch.Tensor]:
    device = next(model.parameters()).device
    return [model(torch.tensor([p], device=device)).logits[0].float().cpu() for p in probes]


def max_relative_diff(got: list[torch.Tensor], ref: list[torch.Tensor]) -> float:
    """max |got - ref| over all probes and positions, divided by max(1, max |ref|)."""
    diff = max(float((g - r).abs().max()) for g, r in zip(got, ref))
    scale = max(1.0, max(float(r.abs().max()) for r in ref))
    return diff / scale


def mean_relative_diff(got: list[torch.Tensor], ref: list[torch.Tensor]) -> float:
    """mean |got - ref| over all probes and positions, divided by the mean |ref|."""
    diff = torch.cat([(g - r).abs().flatten() for g, r in zip(got, ref)]).mean()
    scale = torch.cat([r.abs().flatten() for r in ref]).mean().clamp_min(1e-12)
    return float(diff / scale)


def _count_changes(peft_model, out_dtype: torch.dtype) -> tuple[int, int, int]:
    """(LoRA modules, of those changed in `out_dtype` by the merge, modules_to_save wrappers that differ)."""
    from peft.tuners.lora import LoraLayer
    from peft.utils import ModulesToSaveWrapper

    total = changed = replaced = 0
    for module in peft_model.modules():
        if isinstance(module, LoraLayer):
            weight = module.get_base_layer().weight
            for name in module.active_adapters:
                if name not in getattr(module, "lora_A", {}) and name not in getattr(module, "lora_embedding_A", {}):
                    continue
                total += 1
                delta = module.get_delta_weight(name).float()
                merged = (weight.float() + delta).to(out_dtype)
                if not torch.equal(merged, weight.to(out_dtype)):
                    changed += 1
        elif isinstance(module, ModulesToSaveWrapper):
            original = module.original_module.state_dict()
            for copy in module.modules_to_save.values():
                trained = copy.state_dict()
                if any(not torch.equal(trained[k], original[k]) for k in original if k in trained):
                    replaced += 1
    return total, changed, replaced


def merge_model(spec: str, adapter: str | None, dtype: str | None = None, *, check: bool = True):
    """(model in the output dtype, tokenizer, MergeReport); raises ChatforgeError when a check fails."""
    start = time.perf_counter()
    out_dtype = DTYPES[dtype] if dtype else base_dtype(spec)
    report = MergeReport(base=spec, adapter=adapter, dtype=_dtype_name(out_dtype))

    reference_low = None
    if adapter and check and out_dtype != torch.float32:
        # base + adapter, unmerged, computed in the output dtype: what the saved model must reproduce.
        low, tokenizer = _load(spec, adapter, out_dtype)
        probes = probe_ids(tokenizer)
        reference_low = probe_logits(low, probes)
        del low

    model, tokenizer = _load(spec, adapter, torch.float32)
    probes = probe_ids(tokenizer)
    report.probes = len(probes)
    if adapter:
        report.lora_modules, report.changed_modules, report.modules_to_save = _count_changes(model, out_dtype)
        if report.changed_modules == 0 and report.modules_to_save == 0:
            raise ChatforgeError(
                f"merging adapter {adapter} would leave every weight of the base unchanged in {report.dtype} "
                f"({report.lora_modules} LoRA modules): the adapter looks untrained (LoRA B matrices are zero) or its "
                "updates are below the dtype's resolution; refusing to ship the unchanged base (try --dtype float32)"
            )
        if report.changed_modules < report.lora_modules:
            report.notes.append(
                f"{report.lora_modules - report.changed_modules} of {report.lora_modules} LoRA modules do not change "
                f"the base weights in {report.dtype}"
            )
        reference = probe_logits(model, probes) if check else None
        model = model.merge_and_unload()
        if check:
            report.max_diff_float32 = max_relative_diff(probe_logits(model, probes), reference)
            if report.max_diff_float32 > FLOAT32_TOLERANCE:
                raise ChatforgeError(
                    f"merged model differs from base + adapter {adapter}: max logit difference "
                    f"{report.max_diff_float32:.2e} (relative) > {FLOAT32_TOLERANCE:.0e} in float32"
                )
    model = model.to(out_dtype)
    if reference_low is not None:
        report.error_saved_dtype = mean_relative_diff(probe_logits(model, probes), reference)
        report.error_unmerged_same_dtype = mean_relative_diff(reference_low, reference)
        if report.error_saved_dtype > report.error_unmerged_same_dtype + LOW_PRECISION_TOLERANCE:
            raise ChatforgeError(
                f"merged model in {report.dtype} is off the float32 base + adapter logits by "
                f"{report.error_saved_dtype:.2e} on average (relative), more than base + adapter run in "
                f"{report.dtype} ({report.error_unmerged_same_dtype:.2e}) + {LOW_PRECISION_TOLERANCE:.0e}"
            )
    report.seconds = round(time.perf_counter() - start, 2)
    return model, tokenizer, report


def fix_permissions(folder: Path) -> None:
    """0755 folders, 0644 files (mkdtemp and some writers create private ones)."""
    os.chmod(folder, 0o755)
    for path in folder.rglob("*"):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)


def write_folder_atomically(output: Path, fill: Callable[[Path], Any]) -> Path:
    """Call `fill(tmp)` on a temporary sibling of `output`, finish it (modes, checksums), rename it to `output`."""
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ChatforgeError(f"output {output} already exists and is not an empty folder; choose a new one")
    output.parent.mkdir(parents=True, exist_ok=True)
    from chatforge.io import TMP_PREFIX, clean_leftovers

    # A killed export leaves its temp sibling behind; one untouched for an hour is no live writer's: remove it.
    clean_leftovers(output.parent, stem=output.name, older_than=3600)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{output.name}-", dir=output.parent))
    try:
        fill(tmp)
        fix_permissions(tmp)
        write_checksums(tmp)
        if output.exists():
            output.rmdir()
        tmp.rename(output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return output


def save_hf_folder(model, tokenizer, folder: Path, info: dict[str, Any] | None = None) -> None:
    """Save model + tokenizer as safetensors into `folder`, readable by transformers 4.4x and 5.x."""
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    make_folder_compatible(folder)
    if info is not None:
        (folder / EXPORT_INFO).write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def export_merged(model_spec: str, adapter: str | None, output: Path, dtype: str | None = None) -> Path:
    """Merge `adapter` (if any) into the base model, check it, and save it to the new folder `output`."""
    model, tokenizer, report = merge_model(model_spec, adapter, dtype)
    for note in report.notes:
        log.warning("%s", note)
    return write_folder_atomically(
        Path(output), lambda tmp: save_hf_folder(model, tokenizer, tmp, {"merge": asdict(report)})
    )
