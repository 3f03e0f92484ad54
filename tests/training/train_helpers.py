"""Shared builders for the training-engine tests: a tiny model folder, small chat/text data, and run configs."""

from __future__ import annotations

import json
import random
from pathlib import Path

from chatforge.models.tiny import tiny_llama, tiny_tokenizer
from chatforge.training.config import TrainRunConfig, load_train_config

WORDS = ["hello", "world", "fox", "dog", "capital", "Paris", "Berlin", "quick", "lazy", "brown", "assistant", "tool"]


def tiny_model_dir(root: Path, **overrides) -> Path:
    """A random 2-layer dim-64 Llama plus the tiny tokenizer, saved like a real HF model folder."""
    d = root / "tiny-model"
    if not (d / "config.json").exists():
        d.mkdir(parents=True, exist_ok=True)
        tok = tiny_tokenizer()
        tiny_llama(len(tok), **overrides).save_pretrained(d)
        tok.save_pretrained(d)
    return d


def write_chat_data(path: Path, n: int = 48, seed: int = 0) -> Path:
    """OpenAI-messages JSONL; the reply is a fixed function of the prompt (echo in reverse), so loss can fall."""
    rng = random.Random(seed)
    with open(path, "w") as fh:
        for _ in range(n):
            words = [rng.choice(WORDS) for _ in range(rng.randint(2, 14))]
            conv = {
                "messages": [
                    {"role": "user", "content": "reverse: " + " ".join(words)},
                    {"role": "assistant", "content": " ".join(reversed(words))},
                ]
            }
            fh.write(json.dumps(conv) + "\n")
    return path


def write_text_data(path: Path, n: int = 30, seed: int = 0) -> Path:
    rng = random.Random(seed)
    paragraphs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 40))) + "." for _ in range(n)]
    path.write_text("\n\n".join(paragraphs) + "\n")
    return path


def run_config(tmp: Path, *overrides: str, data: Path | None = None) -> TrainRunConfig:
    """A fast CPU config on the tiny model: LoRA SFT, fp32, single thread, no progress output."""
    model = tiny_model_dir(tmp)
    data = data if data is not None else write_chat_data(tmp / "chat.jsonl")
    base = [
        f"model.name_or_path={model}",
        f"data.train=[{data}]",
        "data.max_length=64",
        "template.name=chatml",
        f"output.dir={tmp / 'out'}",
        "train.num_threads=1",
        "train.batch_size=4",
        "train.learning_rate=1e-3",
        "train.progress=false",
        "train.tensorboard=false",
        "peft.r=4",
        "peft.alpha=8",
    ]
    return load_train_config(None, base + list(overrides))


def losses(out: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r["kind"] == "train"}


def assert_resume_is_exact(make_config, tmp: Path, *settings: str, steps: int, resume_at: int) -> None:
    """Train `steps` steps, delete the last checkpoint (step `steps`) and the summary, resume with `train.resume=auto`
    (from the checkpoint at `resume_at`) and require the same per-step losses within 1e-6. `make_config(tmp,
    *overrides)` builds the stage's run config; `settings` must make it checkpoint at both steps."""
    import shutil

    from chatforge.training import train

    ref_out = train(make_config(tmp, *settings)).output_dir
    want = losses(ref_out)
    dest = tmp / "resumed"
    shutil.copytree(ref_out, dest)
    shutil.rmtree(dest / "checkpoints" / f"step-{steps:06d}")
    (dest / "summary.json").unlink()
    result = train(make_config(tmp, *settings, "train.resume=auto", f"output.dir={dest}"))
    assert result.summary["resumed_from"].endswith(f"step-{resume_at:06d}")
    got = losses(dest)
    assert got.keys() == want.keys() and len(got) == steps
    assert max(abs(got[k] - want[k]) for k in want) < 1e-6
