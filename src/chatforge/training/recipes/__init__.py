"""Training recipes, one per `train.stage`; each reads top to bottom: setup, data, objective, loop, save.

RECIPES maps a stage name to its `run(cfg) -> TrainResult`; `train(cfg)` dispatches on `cfg.train.stage`, after
joining the torchrun process group when there is one (`training.distributed`). The stages in DISTRIBUTED run on
any number of processes; another stage refuses WORLD_SIZE > 1 (`model_setup.check_single_process`).
"""

from __future__ import annotations

from chatforge.training.recipes import dpo, grpo, kto, pt, rm, sft

RECIPES = {"sft": sft.run, "pt": pt.run, "dpo": dpo.run}
RECIPES["grpo"] = grpo.run  # online RL with Python rewards
RECIPES.update({"rm": rm.run, "kto": kto.run})  # reward model, KTO
DISTRIBUTED = {"sft", "pt", "dpo"}  # stages whose recipe goes through session.run_session (DDP / FSDP2 aware)


def train(cfg):
    """Run one training job as configured; returns the output folder and the summary written to summary.json."""
    from chatforge.training import distributed

    d = distributed.setup(cfg.train, cfg.model.device)
    try:
        distributed.check_supported(cfg, d)
        result = RECIPES[cfg.train.stage](cfg)
    except BaseException:
        # A failed rank leaves its group to die with the process (destroying it could wait on peers); a single
        # process forgets its Dist, so a later train() in the same process reads the environment again.
        if not d.active:
            distributed.teardown()
        raise
    distributed.teardown()
    return result
