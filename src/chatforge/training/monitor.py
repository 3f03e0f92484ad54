"""Watching a run: a one-line progress display (loss, lr, tokens/s, ETA), the metrics JSONL log, and TensorBoard
events when the `tensorboard` package is installed."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def _fmt_time(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress:
    """`step 12/100 [12%] loss 2.3456 lr 1.20e-04 1,234 tok/s ETA 0:01:23` redrawn in place on a terminal,
    printed as plain lines (every `every` steps) when output goes to a file or pipe."""

    def __init__(self, total_steps: int, start_step: int = 0, enabled: bool = True, every: int = 1, stream=None):
        self.total, self.start = total_steps, start_step
        self.enabled, self.every = enabled, every
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = time.perf_counter()
        self.tokens = 0

    def update(self, step: int, loss: float, lr: float, tokens: int) -> None:
        self.tokens += tokens
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.t0
        done = step - self.start
        eta = elapsed / done * (self.total - step) if done else 0.0
        line = (
            f"step {step}/{self.total} [{100 * step // max(1, self.total)}%] loss {loss:.4f} lr {lr:.2e} "
            f"{self.tokens / max(elapsed, 1e-9):,.0f} tok/s ETA {_fmt_time(eta)}"
        )
        if self.tty:
            self.stream.write("\r" + line.ljust(100))
            self.stream.flush()
        elif step % self.every == 0 or step == self.total:
            print(line, file=self.stream, flush=True)

    def message(self, text: str) -> None:
        if self.enabled:
            print(("\n" if self.tty else "") + text, file=self.stream, flush=True)

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()


class MetricsLog:
    """Appends one JSON object per line; mirrors numeric fields to TensorBoard when available."""

    def __init__(self, path: str | Path, tensorboard_dir: str | Path | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tb = None
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard not installed: the JSONL log is the record
                self.tb = None
            else:
                self.tb = SummaryWriter(str(tensorboard_dir))

    def truncate_after(self, step: int) -> None:
        """Drop records past `step` (written by a run that died after its last checkpoint) before resuming."""
        if not self.path.is_file():
            return
        keep = [ln for ln in self.path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]
        self.path.write_text("".join(ln + "\n" for ln in keep))

    def write(self, record: dict) -> None:
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.tb is not None:
            prefix = record.get("kind", "train")
            for key, value in record.items():
                if key not in ("step", "kind") and isinstance(value, (int, float)):
                    self.tb.add_scalar(f"{prefix}/{key}", value, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
