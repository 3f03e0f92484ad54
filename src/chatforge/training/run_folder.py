"""The run folder `output.dir`: who may write there, whether a run starts fresh or resumes, the final atomic save.

Rules a user can rely on:
- `chatforge train` writes only into a new (or empty) folder or one an earlier `chatforge train` made (it leaves the
  marker file `.chatforge-run`); a model folder or any other folder of the user's is refused, `output.overwrite`
  included.
- one run at a time per folder: a second run on it fails at once (`.lock`, held while training);
- a resume continues only with the settings that shaped the run so far (data, model, method, optimiser, schedule,
  batching); changing one is refused with the list of what changed;
- the outputs are moved into place only when complete, and `summary.json` is written last: a folder with a
  `summary.json` holds a finished run; resuming a finished run reports it and trains nothing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chatforge.errors import ChatforgeError
from chatforge.io import atomic_write_json, fsync_dir, lock_file
from chatforge.training import checkpoint as ckpt_mod

MARKER = ".chatforge-run"
RUN_FILES = ("summary.json", "metrics.jsonl", "curves.png", "checkpoints", "tensorboard", "config.yaml")
# Settings that may differ on resume: where and how the run is watched, not what it computes.
RESUME_SAFE = {
    "train.resume",
    "train.progress",
    "train.log_every",
    "train.tensorboard",
    "train.num_threads",
    "train.save_every",
    "train.save_total_limit",
    "train.eval_every",
    "train.eval_batch_size",
    # How the run is spread over processes (train.batch_size may change with the number of processes as long as the
    # global batch stays: see _refuse_changed).
    "train.distributed",
    "train.dist_timeout_s",
    "train.fsdp_cpu_offload",
    "model.device",
    "output.dir",
    "output.overwrite",
}


@dataclass
class RunFolder:
    path: Path
    resume_from: ckpt_mod.Checkpoint | None = None
    finished_summary: dict | None = None  # set when resume=auto found a finished run
    _held: contextlib.ExitStack = field(default_factory=contextlib.ExitStack, repr=False)

    def close(self) -> None:
        self._held.close()  # releases the lock


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: data}


def changed_settings(saved: dict, current: dict) -> list[str]:
    """Dotted keys whose values differ between two resolved configs, ignoring the resume-safe ones."""
    a, b = _flatten(saved), _flatten(current)
    return sorted(k for k in set(a) | set(b) if k not in RESUME_SAFE and a.get(k) != b.get(k))


def open_run_folder(cfg) -> RunFolder:
    """Check and lock `output.dir`; decide between a fresh start, a resume and an already finished run.

    Under a process group only rank 0 touches the folder (marker, lock, clean-up); the others wait for its decision
    (or its error, which they raise too) and read the same checkpoint."""
    from chatforge.training.distributed import current

    d = current()
    if not d.active:
        return _open_run_folder(cfg)
    folder, decision = None, None
    if d.is_main:
        try:
            folder = _open_run_folder(cfg)
        except BaseException as err:
            d.broadcast_object({"error": str(err) if isinstance(err, ChatforgeError) else f"rank 0 failed: {err!r}"})
            raise
        resume = folder.resume_from
        decision = {"resume": str(resume.path) if resume else None, "finished": folder.finished_summary}
    decision = d.broadcast_object(decision)
    if folder is not None:
        return folder
    if "error" in decision:
        raise ChatforgeError(decision["error"])
    resume = ckpt_mod.read_checkpoint(decision["resume"]) if decision["resume"] else None
    return RunFolder(Path(cfg.output.dir), resume_from=resume, finished_summary=decision["finished"])


def _open_run_folder(cfg) -> RunFolder:
    import yaml

    from chatforge.config import config_to_dict

    out = Path(cfg.output.dir)
    if out.exists() and not out.is_dir():
        raise ChatforgeError(f"output.dir {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise ChatforgeError(
            f"output.dir {out} is not empty and was not made by chatforge train (no {MARKER} file); "
            "nothing of yours is overwritten: choose a new folder"
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).touch()
    folder = RunFolder(out)
    folder._held.enter_context(lock_file(out / ".lock", what=f"output.dir {out} (another chatforge train?)"))
    try:
        _decide(folder, cfg, config_to_dict(cfg), yaml)
    except BaseException:
        folder.close()
        raise
    return folder


def _refuse_changed(out: Path, where: Path, current: dict, yaml, saved_world: int = 1) -> None:
    """A run continues only with the settings it was started with (config.yaml in its folder). `train.batch_size`
    is per process: it may differ when the global batch (batch_size x processes) is the same."""
    from chatforge.training.distributed import current as current_dist

    if not (out / "config.yaml").is_file():
        return
    saved = yaml.safe_load((out / "config.yaml").read_text()) or {}
    changed = changed_settings(saved, current)
    saved_bs = (saved.get("train") or {}).get("batch_size")
    if saved_bs is not None and saved_bs * saved_world == current["train"]["batch_size"] * current_dist().world:
        changed = [k for k in changed if k != "train.batch_size"]
    if changed:
        old, new = _flatten(saved), _flatten(current)
        detail = "; ".join(f"{k} changed ({old.get(k)!r} -> {new.get(k)!r})" for k in changed[:8])
        raise ChatforgeError(
            f"cannot resume {where}: {detail}. Resume with the run's settings (see {out / 'config.yaml'}), "
            "or start a new run in another output.dir"
        )


def _decide(folder: RunFolder, cfg, current: dict, yaml) -> None:
    import json

    out, resume = folder.path, cfg.train.resume
    found: ckpt_mod.Checkpoint | None = None
    if resume == "auto" and (out / "summary.json").is_file():
        summary = json.loads((out / "summary.json").read_text())
        _refuse_changed(out, out, current, yaml, saved_world=int(summary.get("world_size") or 1))
        folder.finished_summary = summary
        return
    if resume == "auto":
        path = ckpt_mod.latest_checkpoint(out)
        found = ckpt_mod.read_checkpoint(path) if path is not None else None
    elif resume:
        found = ckpt_mod.read_checkpoint(resume)
    if found is not None:
        _refuse_changed(out, found.path, current, yaml, saved_world=_saved_world(out, found, yaml))
    else:
        existing = [n for n in RUN_FILES if (out / n).exists()]
        if existing and not (cfg.output.overwrite or resume == "auto"):
            raise ChatforgeError(
                f"output.dir {out} already holds a run ({', '.join(existing)}); "
                "set train.resume=auto to continue it or output.overwrite=true to replace it"
            )
        for name in existing:
            target = out / name
            shutil.rmtree(target) if target.is_dir() else target.unlink()
    ckpt_mod.clean_incomplete(out)
    for leftover in out.glob(".final-*"):  # a save killed before it was moved into place
        shutil.rmtree(leftover, ignore_errors=True)
    folder.resume_from = found


def _saved_world(out: Path, found: ckpt_mod.Checkpoint, yaml) -> int:
    """How many processes wrote a checkpoint: its planned (global) batch over the per-process batch_size."""
    plan_bs = (found.state.get("plan") or {}).get("batch_size")
    saved = yaml.safe_load((out / "config.yaml").read_text()) or {} if (out / "config.yaml").is_file() else {}
    saved_bs = (saved.get("train") or {}).get("batch_size")
    return plan_bs // saved_bs if plan_bs and saved_bs and plan_bs % saved_bs == 0 else 1


def save_final(out: Path, model, tokenizer, base_model_name: str, state_dict: dict | None = None) -> None:
    """Write the model (or adapter) and tokenizer into a temp folder, sync, then move each file into `out`.

    An adapter's `base_model_name_or_path` is set to `base_model_name`, the model as the user named it (peft would
    record the cache folder a GGUF or the embedded model was converted into). `state_dict` (the full weights an
    FSDP2 run gathered to rank 0) replaces the model's own, sharded, tensors."""
    import json

    tmp = out / f".final-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    extra = {"state_dict": state_dict} if state_dict is not None else {}
    model.save_pretrained(tmp, safe_serialization=True, **extra)
    tokenizer.save_pretrained(tmp)
    adapter_cfg = tmp / "adapter_config.json"
    if adapter_cfg.is_file():
        data = json.loads(adapter_cfg.read_text())
        data["base_model_name_or_path"] = base_model_name
        adapter_cfg.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    for f in tmp.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    for item in sorted(tmp.iterdir()):
        target = out / item.name
        if item.is_dir() and target.exists():
            shutil.rmtree(target)
        os.replace(item, target)
    with contextlib.suppress(OSError):
        tmp.rmdir()
    fsync_dir(out)


def write_summary(out: Path, summary: dict) -> None:
    """summary.json, written last: its presence marks a finished run."""
    atomic_write_json(out / "summary.json", summary)
