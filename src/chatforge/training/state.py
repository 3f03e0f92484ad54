"""The typed state of a run that a checkpoint carries: progress, data position, early stopping, what it depends on.

With the model, optimizer, scheduler and RNG states (saved beside it by `checkpoint.save_checkpoint`), a `TrainState`
is all a resumed run needs to continue exactly: batch order is a pure function of (seed, epoch), so the data
position is just (epoch, batch index).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from chatforge.errors import ChatforgeError


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    batch: int = 0  # index of the next batch unit in this epoch's plan
    tokens: int = 0  # real tokens processed (padding excluded)
    trained_tokens: int = 0  # normaliser total: trained tokens (token losses) or pairs (preference losses)
    elapsed: float = 0.0  # wall seconds spent in earlier processes of this run
    best_val: float | None = None
    best_step: int | None = None
    bad_evals: int = 0  # evaluations in a row without improvement (early stopping)
    plan: dict[str, Any] = field(default_factory=dict)  # what the batch order depends on; a resume must match it

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainState:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def check_plan(self, saved_plan: dict[str, Any], where: str) -> None:
        """A resumed run must see the same data order as the run it continues."""
        diff = sorted(k for k in self.plan if saved_plan.get(k) != self.plan[k])
        if diff:
            raise ChatforgeError(f"cannot resume {where}: {', '.join(diff)} changed since the checkpoint")

    def track_validation(self, val_loss: float, patience: int, min_delta: float) -> bool:
        """Record a validation loss; True when `patience` evaluations in a row failed to improve the best one."""
        if self.best_val is None or val_loss < self.best_val - min_delta:
            self.best_val, self.best_step, self.bad_evals = val_loss, self.step, 0
            return False
        self.bad_evals += 1
        return bool(patience) and self.bad_evals >= patience
