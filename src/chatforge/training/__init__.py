"""Training: recipes per stage over one shared loop, packing, losses, adapters, checkpoints and resume.

from chatforge.training import train, load_train_config
result = train(load_train_config("examples/train_alpaca_lora.yaml", ["train.max_steps=10"]))
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from chatforge.training.config import TrainRunConfig
    from chatforge.training.session import TrainResult

__all__ = ["TrainResult", "TrainRunConfig", "load_train_config", "train"]


def __getattr__(name: str):
    # Lazy: `import chatforge.training.packing` (used by benchmarks) should not pull in transformers and peft.
    if name == "train":
        from chatforge.training.recipes import train

        return train
    if name == "TrainResult":
        from chatforge.training.session import TrainResult

        return TrainResult
    if name in ("TrainRunConfig", "load_train_config"):
        from chatforge.training import config

        return getattr(config, name)
    raise AttributeError(name)
