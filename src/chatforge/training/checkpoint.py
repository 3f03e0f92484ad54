"""Atomic training checkpoints: everything needed to continue a run bit-for-bit, or to use the model as it was.

Layout: `<output>/checkpoints/step-000123/` holding `model/` (a PEFT adapter or a full HF model, via
`save_pretrained`), `optimizer.pt`, `scheduler.pt`, `rng.pt` (torch CPU/CUDA generator states), `state.json`
(step, epoch, batch index, data fingerprint, python/numpy RNG, early-stopping state), `method_state.safetensors`
when the fine-tuning method keeps loop state of its own (AdaLoRA's rank allocator) and the marker `COMPLETE`.
Under `train.distributed=fsdp2` the model's trainable weights and the optimizer state are a sharded
torch.distributed.checkpoint folder `dcp/` instead (every rank writes its shards; it loads on any number of
processes, one included); other ranks' RNG states are `rng-<rank>.pt`. Rank 0 writes everything else.
A checkpoint is written into a hidden temporary folder and renamed into place only after the marker is written, so
a killed process leaves at most a `.tmp-*` folder, which is never picked up and is cleaned on the next start.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from chatforge.errors import ChatforgeError, NotSupportedError
from chatforge.training.distributed import Dist, unwrap

MARKER = "COMPLETE"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def is_complete(path: str | Path) -> bool:
    return (Path(path) / MARKER).is_file()


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (by step)."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        m = _STEP_DIR.match(child.name)
        if m and child.is_dir() and is_complete(child):
            found.append((int(m.group(1)), child))
    return [p for _, p in sorted(found)]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint, or None. Half-written ones (no marker, temp folders) are ignored."""
    ckpts = list_checkpoints(output_dir)
    return ckpts[-1] if ckpts else None


def clean_incomplete(output_dir: str | Path) -> list[Path]:
    """Remove leftovers of interrupted writes/deletes; returns what was removed."""
    root = checkpoint_root(output_dir)
    removed = []
    if root.is_dir():
        for child in root.iterdir():
            if child.name.startswith((".tmp-", ".del-")) or (_STEP_DIR.match(child.name) and not is_complete(child)):
                shutil.rmtree(child, ignore_errors=True)
                removed.append(child)
    return removed


def _rng_state() -> tuple[dict, dict[str, torch.Tensor]]:
    py_version, py_state, py_gauss = random.getstate()
    np_state = np.random.get_state()
    small = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda{i}"] = s
    return small, tensors


def _set_rng_state(small: dict, tensors: dict[str, torch.Tensor]) -> None:
    version, state, gauss = small["python"]
    random.setstate((version, tuple(state), gauss))
    name, keys, pos, has_gauss, cached = small["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda"))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def _fsync_tree(path: Path) -> None:
    # Data must be on disk before the rename publishes the checkpoint, or a crash could publish empty files.
    for f in path.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())


def save_checkpoint(
    output_dir: str | Path,
    step: int,
    model,
    optimizer,
    scheduler,
    state: dict[str, Any],
    keep_last: int,
    dist: Dist | None = None,
    method_state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a checkpoint atomically and prune old ones beyond `keep_last`. `state` must be JSON-serialisable;
    `method_state` (tensors) is what the fine-tuning method's loop hooks need back on resume. Under a process group
    every rank calls it; rank 0 writes and publishes, FSDP2 ranks also write their shards."""
    d = dist or Dist()
    root = checkpoint_root(output_dir)
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}-{d.broadcast_object(os.getpid())}"  # one name for all ranks
    if d.is_main:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    d.barrier()
    rng_small, rng_tensors = _rng_state()
    if d.mode == "fsdp2":
        _save_sharded(tmp / "dcp", model, optimizer)
        if not d.is_main:
            torch.save(rng_tensors, tmp / f"rng-{d.rank}.pt")
    elif d.is_main:
        model = unwrap(model)
        model.save_pretrained(tmp / "model", safe_serialization=True)
        if _is_prompt_learning(model):  # peft saves only the encoder's output; resuming needs the encoder (MLP/LSTM)
            save_file(model.prompt_encoder.state_dict(), tmp / "model" / "prompt_encoder.safetensors")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        if method_state:
            save_file({k: v.contiguous() for k, v in method_state.items()}, tmp / "method_state.safetensors")
    d.barrier()
    if d.is_main:
        _publish(tmp, final, output_dir, step, scheduler, state, rng_small, rng_tensors, keep_last)
    d.barrier()  # nobody moves on (or resumes from it) before it is in place
    return final


def _publish(tmp, final, output_dir, step, scheduler, state, rng_small, rng_tensors, keep_last) -> None:
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save(rng_tensors, tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps({**state, "rng": rng_small}))
    _fsync_tree(tmp)
    (tmp / MARKER).write_text(f"step {step}\n")
    if final.exists():  # a re-run of the same step (e.g. after resume) replaces the old copy
        _discard(final)
    os.replace(tmp, final)
    for old in list_checkpoints(output_dir)[:-keep_last]:
        _discard(old)


def _trainable_names(model) -> set[str]:
    return {n for n, p in unwrap(model).named_parameters() if p.requires_grad}


def _sharded_state(model, optimizer) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    msd, osd = get_state_dict(model, optimizer)
    keep = _trainable_names(model)  # frozen base weights come from the base model, not from the checkpoint
    return {"model": {k: v for k, v in msd.items() if k in keep}, "optim": osd}


def _save_sharded(path: Path, model, optimizer) -> None:
    import torch.distributed.checkpoint as dcp

    dcp.save(_sharded_state(model, optimizer), checkpoint_id=str(path))


def _load_sharded(path: Path, model, optimizer) -> None:
    """Load a dcp/ folder into `model` and `optimizer` as they are sharded now (any world size, DDP or none)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    state = _sharded_state(model, optimizer)
    if not state["model"]:
        raise ChatforgeError(f"{path}: the model has no trainable weights to restore")
    with warnings.catch_warnings():  # loading on one process without a process group is intended, not a mistake
        warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process")
        dcp.load(state, checkpoint_id=str(path))
    set_state_dict(
        model,
        optimizer,
        model_state_dict=state["model"],
        optim_state_dict=state["optim"],
        options=StateDictOptions(strict=False),
    )
    optimizer.zero_grad(set_to_none=True)  # get_state_dict's optimizer warm-up left zero gradients behind


def restore_training(ckpt: Checkpoint, model, optimizer, dist: Dist | None = None) -> None:
    """Model weights and optimizer state from either layout, into a plain, DDP or FSDP2 model."""
    d = dist or Dist()
    if (ckpt.path / "dcp").is_dir():
        _load_sharded(ckpt.path / "dcp", model, optimizer)
        return
    if d.mode == "fsdp2":
        raise NotSupportedError(
            f"{ckpt.path} was written by one process or DDP (no dcp/ folder); train.distributed=fsdp2 resumes only "
            "FSDP2 checkpoints: resume it with train.distributed=ddp or one process"
        )
    restore_model(ckpt, unwrap(model))
    restore_optimizer(ckpt, optimizer)


def _discard(path: Path) -> None:
    # Rename first: a half-deleted folder must never look like a checkpoint (its marker may go last).
    trash = path.parent / f".del-{path.name}-{os.getpid()}"
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


@dataclass
class Checkpoint:
    path: Path
    state: dict[str, Any]


def read_checkpoint(path: str | Path) -> Checkpoint:
    path = Path(path)
    if not is_complete(path):
        raise ChatforgeError(f"{path} is not a complete checkpoint (no {MARKER} marker)")
    return Checkpoint(path, json.loads((path / "state.json").read_text()))


def _is_prompt_learning(model) -> bool:
    return hasattr(model, "peft_config") and model.active_peft_config.is_prompt_learning


def restore_model(ckpt: Checkpoint, model) -> None:
    """Load the trainable weights saved in the checkpoint into `model` (adapter for PEFT models, else all)."""
    mdir = ckpt.path / "model"
    if hasattr(model, "peft_config"):
        from peft import set_peft_model_state_dict

        weights = load_file(mdir / "adapter_model.safetensors")
        result = set_peft_model_state_dict(model, weights)
        unexpected = list(getattr(result, "unexpected_keys", None) or [])
        if _is_prompt_learning(model):  # peft loads prompt_embeddings itself, after reporting it as unexpected
            unexpected = [k for k in unexpected if k != "prompt_embeddings"]
            model.prompt_encoder.load_state_dict(load_file(mdir / "prompt_encoder.safetensors"))
        if unexpected:
            raise ChatforgeError(f"{mdir}: adapter does not match the model: {unexpected[:5]}")
        return
    state: dict[str, torch.Tensor] = {}
    for f in sorted(mdir.glob("*.safetensors")):
        state.update(load_file(f))
    missing = [n for n, p in model.named_parameters() if p.requires_grad and n not in state]
    # Tied output heads are saved once under the embedding's name; they load through it.
    tied = {n for n in missing if _is_tied(model, n)}
    if set(missing) - tied:
        raise ChatforgeError(f"{mdir}: checkpoint lacks trainable weights {sorted(set(missing) - tied)[:5]}")
    model.load_state_dict(state, strict=False)


def _is_tied(model, name: str) -> bool:
    params = dict(model.named_parameters(remove_duplicate=False))
    target = params.get(name)
    return target is not None and any(p is target and n != name for n, p in params.items())


def read_method_state(ckpt: Checkpoint) -> dict[str, torch.Tensor]:
    """The method's loop state saved with the checkpoint (empty when the method keeps none)."""
    path = ckpt.path / "method_state.safetensors"
    return load_file(path) if path.is_file() else {}


def restore_optimizer(ckpt: Checkpoint, optimizer) -> None:
    optimizer.load_state_dict(torch.load(ckpt.path / "optimizer.pt", map_location="cpu", weights_only=True))


def restore_scheduler(ckpt: Checkpoint, scheduler) -> None:
    scheduler.load_state_dict(torch.load(ckpt.path / "scheduler.pt", weights_only=True))


def restore_rng(ckpt: Checkpoint, rank: int = 0) -> None:
    """The RNG states saved by this rank (rank 0's where the checkpoint had fewer ranks)."""
    own = ckpt.path / f"rng-{rank}.pt"
    tensors = torch.load(own if rank and own.is_file() else ckpt.path / "rng.pt", weights_only=True)
    _set_rng_state(ckpt.state["rng"], tensors)
