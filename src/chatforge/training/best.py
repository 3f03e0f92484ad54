"""`train.restore_best`: keep the weights of the best validation step and end the run with them.

Early stopping stops after `early_stopping_patience` evaluations without improvement, so the weights it would save
are `patience * eval_every` steps past the best ones (issue 21: best validation loss at step 300, saved step 450).
With `train.restore_best: true`, every evaluation that improves the best validation loss writes the trainable
weights (the adapter, or every trainable parameter of full / freeze fine-tuning) to `checkpoints/best/`, atomically
(`chatforge.io.atomic_dir`: a killed write leaves the previous best or nothing). At the end of the run those weights
are loaded back into the model before the final save, and `summary.json` says which step's weights were saved
(`saved_step`) and whether they were restored (`restored_best`).

Only trainable parameters are saved (everything else is frozen, so it cannot have changed). Only the main process
(rank 0) writes; every process reads the folder back at the end, so ranks end with identical weights.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from chatforge.errors import ChatforgeError
from chatforge.io import atomic_dir

BEST_DIR = "best"
WEIGHTS = "weights.safetensors"
INFO = "best.json"


def best_dir(output_dir: str | Path) -> Path:
    """`<output>/checkpoints/best`: beside the step checkpoints, never pruned or picked up as one (no step name)."""
    return Path(output_dir) / "checkpoints" / BEST_DIR


def _is_main_process() -> bool:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() == 0
    return os.environ.get("RANK", "0") == "0"


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    # A distributed wrapper (DDP / FSDP-style) keeps the real model in `.module`; names must match without it.
    return getattr(model, "module", model)


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Detached CPU copies of every trainable parameter, by name (tied parameters once)."""
    return {
        name: p.detach().to("cpu", copy=True).contiguous()
        for name, p in _unwrap(model).named_parameters()
        if p.requires_grad
    }


@dataclass
class BestKeeper:
    """Writes the best weights when an evaluation improves on the best validation loss; restores them at the end."""

    output_dir: Path
    enabled: bool = True
    resumed: bool = False  # a resumed run trusts the best folder of its earlier processes; a fresh run clears it
    saved_step: int | None = None  # the step whose weights are in checkpoints/best (this process or an earlier one)

    def __post_init__(self) -> None:
        self.output_dir = Path(self.output_dir)
        folder = best_dir(self.output_dir)
        if not self.resumed:
            # Left by a run that was killed before any checkpoint (train.resume=auto then starts afresh): its step
            # numbers would collide with this run's.
            if folder.exists() and _is_main_process():
                shutil.rmtree(folder)
            return
        if self.enabled and (folder / INFO).is_file():  # its best so far is on disk already
            self.saved_step = int(json.loads((folder / INFO).read_text())["step"])

    def after_eval(self, state, model: torch.nn.Module) -> None:
        """Call after `state.track_validation`: saves the weights when this evaluation became the best one."""
        if not self.enabled or state.best_step != state.step or self.saved_step == state.step:
            return
        if _is_main_process():
            with atomic_dir(best_dir(self.output_dir), replace=True) as tmp:
                save_file(trainable_state(model), str(tmp / WEIGHTS))
                (tmp / INFO).write_text(json.dumps({"step": state.step, "val_loss": state.best_val}) + "\n")
        self.saved_step = state.step

    def restore(self, state, model: torch.nn.Module) -> dict:
        """Load the best weights back when they are not the current ones; returns the summary fields.

        `saved_step` is the step whose weights the final save holds; `restored_best` is True when they were loaded
        from checkpoints/best (False when the last step was the best, or restore_best is off).
        """
        if not self.enabled or state.best_step is None or state.best_step == state.step:
            return {"saved_step": state.step, "restored_best": False}
        _barrier()  # rank 0 may still be renaming the folder into place
        folder = best_dir(self.output_dir)
        if self.saved_step != state.best_step or not (folder / WEIGHTS).is_file():
            raise ChatforgeError(
                f"train.restore_best: the best validation loss was at step {state.best_step} but {folder} holds "
                f"{'step ' + str(self.saved_step) if self.saved_step is not None else 'nothing'} (was restore_best "
                "turned on while resuming a run?); set train.restore_best=false to keep the last weights"
            )
        weights = load_file(str(folder / WEIGHTS))
        params = dict(_unwrap(model).named_parameters())
        missing = sorted(n for n, p in params.items() if p.requires_grad and n not in weights)
        unknown = sorted(n for n in weights if n not in params)
        if missing or unknown:
            raise ChatforgeError(
                f"{folder / WEIGHTS} does not match the model: missing {missing[:3]}, unexpected {unknown[:3]}"
            )
        with torch.no_grad():
            for name, value in weights.items():
                params[name].copy_(value.to(params[name].device, params[name].dtype))
        return {"saved_step": state.best_step, "restored_best": True}
