"""Watching a run: a one-line progress display (loss, lr, tokens/s, ETA), the metrics JSONL log, TensorBoard events
when the `tensorboard` package is installed, and steady-state throughput with MFU.

At each validation, token objectives also report perplexity (`val_ppl` = exp(val_loss), in the progress line and
`metrics.jsonl`), and `Sampler` appends generations from the fixed `train.sample_prompts` to `samples.jsonl`.

Throughput is reported in steady state: the first step of a process (allocator warm-up, first kernels) and every step
during which torch.compile built a graph are counted as warm-up and shown apart, so a compiled run's tok/s is not
dragged down by its compile time.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
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

    def update(self, step: int, loss: float, lr: float, tok_per_s: float) -> None:
        """Show a step; `tok_per_s` is the steady-state rate (see `Throughput`)."""
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.t0
        done = step - self.start
        eta = elapsed / done * (self.total - step) if done else 0.0
        line = (
            f"step {step}/{self.total} [{100 * step // max(1, self.total)}%] loss {loss:.4f} lr {lr:.2e} "
            f"{tok_per_s:,.0f} tok/s ETA {_fmt_time(eta)}"
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
        from chatforge.io import atomic_write_text

        keep = [ln for ln in self.path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]
        atomic_write_text(self.path, "".join(ln + "\n" for ln in keep))

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


def perplexity(mean_loss: float) -> float:
    """exp(mean token loss), saturating at 1e30 instead of overflowing for a diverged run."""
    return math.exp(mean_loss) if mean_loss < math.log(1e30) else 1e30


def eval_line(step: int, ev: dict) -> str:
    """The progress line of one validation: loss, and perplexity and accuracy where the objective has them."""
    line = f"step {step}: val_loss {ev['val_loss']:.4f}"
    if "val_ppl" in ev:
        line += f" ppl {ev['val_ppl']:,.2f}"
    if "val_accuracy" in ev:
        line += f" accuracy {ev['val_accuracy']:.4f}"
    return line


class Sampler:
    """Greedy generations from fixed prompts, appended to `samples.jsonl` ({"step", "prompt", "text"}) at each
    validation, so a run shows what its model writes as it learns.

    Greedy decoding draws no random numbers, so sampling leaves a resumed run identical to an uninterrupted one.
    `chat=True` renders each prompt as a user turn of the template (sft); otherwise it is text to continue (pt).
    Compiled layers run eagerly here (`torch.compiler.set_stance`): a generation's shapes would otherwise add graphs.
    """

    def __init__(
        self,
        path: str | Path,
        tokenizer,
        template,
        prompts: list[str],
        *,
        chat: bool,
        max_new_tokens: int,
        device,
        autocast: Callable[[], AbstractContextManager] = nullcontext,
    ):
        from chatforge.data.schema import Conversation, Message
        from chatforge.templates.encode import encode_prompt, encode_text, stop_token_ids

        self.log = MetricsLog(path)
        self.tokenizer, self.prompts, self.max_new_tokens = tokenizer, list(prompts), max_new_tokens
        self.device, self.autocast = device, autocast
        if chat:
            self.inputs = [encode_prompt(Conversation([Message("user", p)]), tokenizer, template) for p in prompts]
            self.stop = stop_token_ids(tokenizer, template)
        else:
            self.inputs = [encode_text(p, tokenizer, add_eos=False) for p in prompts]
            self.stop = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []

    def truncate_after(self, step: int) -> None:
        self.log.truncate_after(step)

    def generate(self, model) -> list[str]:
        import torch

        stance = getattr(torch.compiler, "set_stance", None)
        was_training = model.training
        model.eval()
        texts = []
        try:
            with torch.no_grad(), stance("force_eager") if stance else nullcontext(), self.autocast():
                for ids in self.inputs:
                    x = torch.tensor([ids or [self.stop[0] if self.stop else 0]], device=self.device)
                    out = model.generate(
                        input_ids=x,
                        attention_mask=torch.ones_like(x),
                        max_new_tokens=self.max_new_tokens,
                        do_sample=False,
                        use_cache=True,
                        eos_token_id=self.stop or None,
                        pad_token_id=self.tokenizer.pad_token_id,
                    )
                    texts.append(self.tokenizer.decode(out[0, x.shape[1] :].tolist(), skip_special_tokens=True))
        finally:
            model.train(was_training)
        return texts

    def __call__(self, model, step: int) -> list[dict]:
        records = [dict(kind="sample", step=step, prompt=p, text=t) for p, t in zip(self.prompts, self.generate(model))]
        for record in records:
            self.log.write(record)
        return records


def compile_count() -> int:
    """Graphs torch.compile has built in this process so far (a step that raises it was compiling)."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:  # a torch without dynamo: nothing ever compiles
        return 0
    return int(counters["stats"].get("unique_graphs", 0))


# Dense bf16 tensor-core peaks (FLOP/s) by device-name fragment, for MFU; others need train.peak_tflops.
_PEAK_BF16 = (
    ("H100", 989e12),
    ("H200", 989e12),
    ("H800", 989e12),
    ("H20", 148e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("4090", 165e12),
)


def peak_flops(device, override_tflops: float | None = None) -> float | None:
    """The accelerator's bf16 dense peak in FLOP/s: `override_tflops` if given, else from a table of known GPUs."""
    if override_tflops:
        return override_tflops * 1e12
    if getattr(device, "type", str(device)) != "cuda":
        return None
    import torch

    name = torch.cuda.get_device_name(device)
    return next((peak for frag, peak in _PEAK_BF16 if frag in name), None)


@dataclass
class FlopModel:
    """Model FLOPs of a training step, counted as the field does (recompute is not counted as useful work):
    per token 2N forward + 2N for input gradients + 2N' for weight gradients (N = matmul parameters, N' = the
    trained ones: 6N for full fine-tuning, ~4N for LoRA), plus causal attention 6 * layers * width * len^2 per
    sample of `len` tokens."""

    matmul_params: int
    trained_matmul_params: int
    layers: int
    attention_width: int

    @classmethod
    def of(cls, model) -> FlopModel:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        cfg = base.config
        emb = base.get_input_embeddings().weight
        head = getattr(base.get_output_embeddings(), "weight", None)
        total = trained = 0
        seen: set[int] = set()
        for p in model.parameters():
            if id(p) in seen or p.ndim < 2 or (p is emb and p is not head):
                continue  # an embedding lookup is no matmul (unless the head shares its weight)
            seen.add(id(p))
            total += p.numel()
            trained += p.numel() if p.requires_grad else 0
        heads = getattr(cfg, "num_attention_heads", 0) or 0
        head_dim = getattr(cfg, "head_dim", None) or (cfg.hidden_size // max(1, heads))
        return cls(total, trained, int(getattr(cfg, "num_hidden_layers", 0) or 0), int(heads * head_dim))

    def step_flops(self, tokens: int, doc_lengths: list[int]) -> float:
        dense = (4 * self.matmul_params + 2 * self.trained_matmul_params) * tokens
        attention = 6 * self.layers * self.attention_width * sum(n * n for n in doc_lengths)
        return float(dense + attention)


@dataclass
class Throughput:
    """Per-step tokens and times of this process, split into warm-up and steady state; MFU when the peak is known."""

    flops: FlopModel | None = None
    peak: float | None = None
    steady_tokens: int = 0
    steady_time: float = 0.0
    steady_flops: float = 0.0
    warmup_time: float = 0.0
    warmup_steps: int = 0
    compile_steps: int = 0
    steps: int = 0

    def record(self, tokens: int, seconds: float, doc_lengths: list[int], *, compiled: bool) -> None:
        self.steps += 1
        self.compile_steps += int(compiled)
        if compiled or self.steps == 1:
            self.warmup_steps += 1
            self.warmup_time += seconds
            return
        self.steady_tokens += tokens
        self.steady_time += seconds
        if self.flops is not None:
            self.steady_flops += self.flops.step_flops(tokens, doc_lengths)

    def steady_tok_per_s(self) -> float:
        return self.steady_tokens / self.steady_time if self.steady_time else 0.0

    def mfu(self) -> float | None:
        if not (self.peak and self.steady_time and self.steady_flops):
            return None
        return self.steady_flops / self.steady_time / self.peak

    def summary(self) -> dict:
        mfu = self.mfu()
        return dict(
            steady_tok_per_s=round(self.steady_tok_per_s(), 1) if self.steady_time else None,
            steady_steps=self.steps - self.warmup_steps,
            warmup_steps=self.warmup_steps,
            warmup_s=round(self.warmup_time, 3),
            compile_steps=self.compile_steps,
            mfu=float(f"{mfu:.4g}") if mfu is not None else None,  # significant figures: tiny models stay > 0
        )
