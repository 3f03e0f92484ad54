"""Training recipes, one per `train.stage`; each reads top to bottom: setup, data, objective, loop, save.

RECIPES maps a stage name to its `run(cfg) -> TrainResult`; `train(cfg)` dispatches on `cfg.train.stage`.
"""

from __future__ import annotations

from chatforge.training.recipes import dpo, kto, pt, rm, sft  # stages rm and kto

RECIPES = {"sft": sft.run, "pt": pt.run, "dpo": dpo.run}
RECIPES.update({"rm": rm.run, "kto": kto.run})  # reward model, KTO


def train(cfg):
    """Run one training job as configured; returns the output folder and the summary written to summary.json."""
    return RECIPES[cfg.train.stage](cfg)
