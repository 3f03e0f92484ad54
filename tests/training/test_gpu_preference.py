"""Stages rm and kto on CUDA (bf16 autocast, rows padded to multiples of 64): they learn a held-out preference, and
in fp32 the CUDA losses equal the CPU ones step for step."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_kto import write_kto_data  # noqa: E402
from test_reward_model import write_scored_pairs  # noqa: E402
from train_helpers import losses, run_config  # noqa: E402

from chatforge.training import train  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _cfg(tmp: Path, stage: str, *overrides: str):
    tmp.mkdir(parents=True, exist_ok=True)  # callers pass a fresh subfolder per device
    if stage == "rm":
        data = write_scored_pairs(tmp / "pairs.jsonl", 64, 0)
    else:
        data = write_kto_data(tmp / "kto.jsonl", 64, 0)
    return run_config(
        tmp, f"train.stage={stage}", "train.batch_size=4", "train.scheduler=constant", *overrides, data=data
    )


def _last_eval(out: Path) -> dict:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == "eval"][-1]


@pytest.mark.parametrize(
    "stage,settings",
    [
        ("rm", ["peft.finetuning=lora", "train.learning_rate=3e-3"]),
        ("rm", ["peft.finetuning=full", "train.learning_rate=1e-3"]),
        ("kto", ["peft.finetuning=lora", "kto.beta=1.0", "train.learning_rate=1e-2"]),
        ("kto", ["peft.finetuning=full", "kto.beta=1.0", "train.learning_rate=1e-3"]),
    ],
    ids=["rm-lora", "rm-full", "kto-lora", "kto-full"],
)
def test_learns_on_cuda_in_bf16(tmp_path, stage, settings):
    cfg = _cfg(
        tmp_path,
        stage,
        "model.device=cuda",
        "train.precision=bf16",
        "data.val_size=0.5",
        "train.max_steps=20",
        *settings,
    )
    result = train(cfg)
    assert result.summary["device"].startswith("cuda") and result.summary["precision"] == "bf16"
    last = _last_eval(result.output_dir)
    assert last["val_accuracy"] > 0.8  # chance is 0.5
    assert last["val_margin"] > 0


@pytest.mark.parametrize("stage", ["rm", "kto"])
def test_cuda_fp32_losses_equal_cpu(tmp_path, stage):
    common = ["train.max_steps=4", "peft.dropout=0", "model.dtype=float32", "train.precision=fp32", "data.val_size=0"]
    cpu = train(_cfg(tmp_path / "cpu", stage, "model.device=cpu", *common))
    gpu = train(_cfg(tmp_path / "gpu", stage, "model.device=cuda", "train.pad_to_multiple_of=64", *common))
    a, b = losses(cpu.output_dir), losses(gpu.output_dir)
    assert a.keys() == b.keys() and len(a) == 4
    for step in a:
        assert abs(a[step] - b[step]) < 2e-3, (step, a[step], b[step])
