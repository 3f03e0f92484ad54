"""Training: the explicit training loop, packing, losses, adapters, checkpoints and resume.

from chatforge.training import train, load_train_config
result = train(load_train_config("examples/train_alpaca_lora.yaml", ["train.max_steps=10"]))
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from chatforge.training.config import TrainRunConfig
    from chatforge.training.loop import TrainResult

__all__ = ["TrainResult", "TrainRunConfig", "load_train_config", "train"]


def __getattr__(name: str):
    # Lazy: `import chatforge.training.packing` (used by benchmarks) should not pull in transformers and peft.
    if name in ("train", "TrainResult"):
        from chatforge.training import loop

        return getattr(loop, name)
    if name in ("TrainRunConfig", "load_train_config"):
        from chatforge.training import config

        return getattr(config, name)
    raise AttributeError(name)
