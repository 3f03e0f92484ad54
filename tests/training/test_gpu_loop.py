"""The training loop with packed rows and FlexAttention document masks (CUDA) matches the 4D-mask path."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_helpers import losses, run_config  # noqa: E402

from chatforge.errors import ChatforgeError
from chatforge.training import train


def test_flex_attention_is_refused_on_cpu(tmp_path):
    cfg = run_config(tmp_path, "train.batching=packed", "train.attention=flex", "model.device=cpu", "train.max_steps=1")
    with pytest.raises(ChatforgeError, match="CUDA"):
        train(cfg)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_packed_flex_losses_equal_the_mask_path(tmp_path):
    common = ["train.batching=packed", "model.device=cuda", "train.max_steps=3", "peft.dropout=0"]
    common += ["model.dtype=float32", "train.precision=fp32"]  # compare the two attention paths, not bf16 noise
    mask = train(run_config(tmp_path / "a", *common, "train.attention=mask"))
    flex = train(run_config(tmp_path / "b", *common, "train.attention=flex"))
    assert "flex_attention" in flex.summary["speedups"]
    a, b = losses(mask.output_dir), losses(flex.output_dir)
    assert a.keys() == b.keys() and len(a) == 3
    for step in a:
        assert abs(a[step] - b[step]) < 1e-3, (step, a[step], b[step])
