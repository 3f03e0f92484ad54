"""Distributed training over NCCL: a world of one under torchrun (one GPU is enough) and, with two or more GPUs, DDP
over 2 processes against 1 process at the same global batch. fp32 so the comparison is tight."""

from __future__ import annotations

import json

import pytest
import torch
from test_distributed import assert_same_run, losses, train_one, train_torchrun

pytestmark = pytest.mark.gpu

FP32 = ("train.precision=fp32", "model.dtype=float32", "train.pad_to_multiple_of=1")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mode", ["ddp", "fsdp2"])
def test_nccl_world_of_one_trains_like_a_plain_process(tmp_path, mode):
    plain = train_one(tmp_path, "plain", "train.batch_size=4", *FP32, device="auto")
    one = train_torchrun(
        tmp_path, f"nccl-{mode}", 1, "train.batch_size=4", f"train.distributed={mode}", *FP32, device="auto"
    )
    summary = json.loads((one / "summary.json").read_text())
    assert (summary["distributed"], summary["world_size"]) == (mode, 1)
    assert summary["device"].startswith("cuda")
    assert all(v == v for v in losses(one).values())  # finite
    assert_same_run(plain, one, tol=1e-5)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_nccl_ddp_two_gpus_match_one_gpu(tmp_path):
    one = train_one(tmp_path, "one", "train.batch_size=4", *FP32, device="auto")
    two = train_torchrun(tmp_path, "two", 2, "train.batch_size=2", "train.distributed=ddp", *FP32, device="auto")
    assert_same_run(one, two, tol=1e-5)
