"""Training speed through the real CLI: `chatforge train` beside the transformers + PEFT reference, in one device run.

Each setting runs in its own subprocess (a fresh CUDA context, so peak memory is per setting) and gives one JSON line;
the table at the end puts ours and the reference side by side.

    python3 bench/train_speed.py --suite 7b   --peer .bench/hf_peft_baseline.py --out $OUT/train_speed.jsonl
    python3 bench/train_speed.py --suite 135m --peer .bench/hf_peft_baseline.py
    python3 bench/train_speed.py --suite padded --alpaca .bench/alpaca_en.jsonl.gz --tokenizer .bench/smollm2-tok
    python3 bench/train_speed.py --suite pretrain124m --peer .bench/hf_peft_baseline.py --out $OUT/pt124m.jsonl
    python3 bench/train_speed.py --suite smoke      (tiny shapes; runs on CPU too)

Ours = `python -m chatforge.cli train CONFIG.yaml k=v ...` exactly as a user runs it, on a random-weight model of the
reference's shape (`model.init` with the shape's Llama fields, built on the GPU) and the numbers it writes to
`summary.json`: steady-state tokens/s (compile warm-up excluded; `warmup_s` shows it), MFU and peak GPU memory.
Full-length rows come from `stage: pt` on generated text (every row `--seq` tokens, every token trained, like the
reference's `labels=input_ids`). The reference is `../shared/bench/hf_peft_baseline.py` (plain, and `--liger` when
liger_kernel is importable), which reports the median step after two warm-up steps.

`--suite pretrain124m` is issue 13's pretraining row: `stage: pt` on token shards written by `chatforge data tokenize`
(the real streaming path, document masks on), `model.init.preset: llama-124m` (GPT-2 small's shape, vocabulary
50,304), full training at seq 1024 (bs 32) and 2048 (bs 16), default precision (fp32 master + bf16 autocast) and
`model.dtype=bfloat16`. The peer script has no 124m shape, so it is run unchanged with that shape added to its
`SHAPES` table (`--peer-shape`, loaded with importlib in a subprocess), `--mode full`, plain and `--liger`.
`--no-docmask-row` adds, after our default row of each seq, the same shape with `data.document_mask=false` (each row
one plain causal sample, SDPA `is_causal`): the like-for-like row beside the peer, which attends causally over the
whole row too.

`--suite padded` compares padded (length-grouped) batches of real Alpaca conversations: ours is `stage: sft` with
`train.batching=length_grouped`; the reference (`--ref-padded`, in this file) is the stock HF step
(`model(**batch).loss`, gradient checkpointing as in the reference script) on randomly ordered batches padded to
their longest sample, on the same conversations tokenized the same way. Only real tokens count on both sides.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

SHAPES = {
    "llama2-7b": dict(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32000,
        max_position_embeddings=4096,
    ),
    "smollm2-135m": dict(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        vocab_size=49152,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
    ),
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=512,
        max_position_embeddings=2048,
    ),
}
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ENV: dict = {}  # versions and GPU, recorded with every row
OUT_FILE: Path | None = None  # each row is appended as soon as it is measured (a killed run keeps what it had)
WORDS = "the of and to in is was for on that with as by at from his her an are were which this be or had".split()


# ----------------------------------------------------------------------------------------------- inputs
def tiny_tokenizer_dir(work: Path) -> Path:
    """A byte-level tokenizer built in code (any tokenizer does: ids are random-like for speed purposes)."""
    from chatforge.models.tiny import tiny_tokenizer

    out = work / "tokenizer"
    if not (out / "tokenizer.json").is_file():
        tiny_tokenizer().save_pretrained(out)
    return out


def text_corpus(work: Path, tokens_needed: int) -> Path:
    """Generated documents long enough that `stage: pt` cuts them into full `--seq`-token rows."""
    path = work / f"corpus-{tokens_needed}.txt"
    if not path.is_file():
        rng = random.Random(0)
        # ~1.5 tokens per word with the byte-level tiny tokenizer; paragraphs of ~20k words are whole documents.
        n_words = tokens_needed
        paragraphs, words = [], []
        for _ in range(n_words):
            words.append(rng.choice(WORDS))
            if len(words) >= 20000:
                paragraphs.append(" ".join(words) + ".")
                words = []
        if words:
            paragraphs.append(" ".join(words) + ".")
        path.write_text("\n\n".join(paragraphs) + "\n")
    return path


# ----------------------------------------------------------------------------------------------- one setting
def emit(row: dict) -> dict:
    row.update(ENV)
    line = json.dumps(row)
    print(line, flush=True)
    if OUT_FILE is not None:
        with open(OUT_FILE, "a") as fh:
            fh.write(line + "\n")
    return row


def run_ours(label: str, work: Path, overrides: list[str]) -> dict:
    out = work / "runs" / label.replace(" ", "_").replace("/", "-")
    cmd = [sys.executable, "-m", "chatforge.cli", "train", *overrides, f"output.dir={out}", "output.overwrite=true"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    row = {"side": "ours", "label": label, "command": "chatforge train " + " ".join(overrides), "rc": proc.returncode}
    if proc.returncode != 0:
        row["error"] = proc.stderr[-3000:]
        return emit(row)
    s = json.loads((out / "summary.json").read_text())
    row.update(
        tok_s=s.get("steady_tok_per_s"),
        mfu=s.get("mfu"),
        peak_GiB=s.get("peak_gpu_memory_gib"),
        warmup_s=s.get("warmup_s"),
        compile_steps=s.get("compile_steps"),
        steady_steps=s.get("steady_steps"),
        padding=s.get("padding_fraction"),
        speedups=s.get("speedups"),
        precision=s.get("precision"),
        wall_s=round(time.perf_counter() - t0, 1),
    )
    return emit(row)


def run_peer(label: str, peer: str, args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, peer, *args], capture_output=True, text=True)
    row = {"side": "peer", "label": label, "command": f"{Path(peer).name} " + " ".join(args), "rc": proc.returncode}
    if proc.returncode != 0:
        row["error"] = proc.stderr[-3000:]
        return emit(row)
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    row.update(tok_s=last["tok_s"], mfu=last["mfu"], peak_GiB=last["peak_GiB"])
    return emit(row)


def ref_padded(a) -> dict:
    """The stock HF step on padded batches of real conversations (this file's own reference for --suite padded)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from chatforge.training.packing import pad_batch

    examples = [tuple(x) for x in json.loads(Path(a.examples).read_text())]
    shape = dict(SHAPES[a.shape], vocab_size=a.vocab)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(LlamaConfig(**shape)).to(torch.bfloat16)
    if a.liger:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance

        _apply_liger_kernel_to_instance(model=model)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=LORA_TARGETS, lora_dropout=0.0))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)
    order = list(range(len(examples)))
    random.Random(0).shuffle(order)
    torch.cuda.reset_peak_memory_stats()
    real = slots = 0
    t_start = None
    for step, s in enumerate(range(0, a.steps * a.batch, a.batch)):
        if step == 2:  # two warm-up steps, as the reference script
            torch.cuda.synchronize()
            t_start, real, slots = time.perf_counter(), 0, 0
        b = {k: v.cuda() for k, v in pad_batch([examples[i] for i in order[s : s + a.batch]], 0).items()}
        model(**b).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        real += int(b["attention_mask"].sum())
        slots += b["input_ids"].numel()
    torch.cuda.synchronize()
    dt = time.perf_counter() - t_start
    return dict(
        tok_s=round(real / dt),
        real_frac=round(real / slots, 3),
        peak_GiB=round(torch.cuda.max_memory_allocated() / 2**30, 2),
    )


# ----------------------------------------------------------------------------------------------- suites
def init_override(shape: str) -> str:
    fields = ", ".join(f"{k}: {str(v).lower() if isinstance(v, bool) else v}" for k, v in SHAPES[shape].items())
    return "model.init={" + fields + "}"


def common_pt(work: Path, shape: str, seq: int, batch: int, steps: int) -> list[str]:
    corpus = text_corpus(work, int(2.0 * seq * batch * (steps + 2)))
    return [
        "model.name_or_path=scratch",
        f"model.tokenizer={tiny_tokenizer_dir(work)}",
        init_override(shape),
        f"data.train=[{corpus}]",
        f"data.max_length={seq}",
        "train.stage=pt",
        "train.batching=packed",
        f"train.batch_size={batch}",
        f"train.max_steps={steps}",
        "train.learning_rate=1e-4",
        "train.max_grad_norm=0",
        "train.progress=false",
        "train.tensorboard=false",
        "template.name=chatml",
    ]


LORA = [
    "peft.finetuning=lora",
    "peft.r=16",
    "peft.alpha=32",
    "peft.dropout=0",
    f"peft.target_modules=[{','.join(LORA_TARGETS)}]",
]


def suite_7b(a, work: Path) -> list[dict]:
    rows = []
    peer = ["--shape", "llama2-7b", "--mode", "lora", "--seq", "2048"]
    rows.append(run_peer("peer plain ckpt bs4", a.peer, [*peer, "--batch", "4", "--grad-ckpt"]))
    if a.liger:
        rows.append(run_peer("peer liger ckpt bs4", a.peer, [*peer, "--batch", "4", "--grad-ckpt", "--liger"]))
        rows.append(run_peer("peer liger bs2 (no ckpt)", a.peer, [*peer, "--batch", "2", "--liger"]))
    base = common_pt(work, "llama2-7b", 2048, 4, a.steps) + LORA + ["train.compile_layers=true"]
    for label, extra in a.variants_7b:
        rows.append(run_ours(label, work, base + extra))
    return rows


def suite_135m(a, work: Path) -> list[dict]:
    rows = []
    peer = ["--shape", "smollm2-135m", "--mode", "full", "--seq", "2048"]
    rows.append(run_peer("peer plain bs16", a.peer, [*peer, "--batch", "16"]))
    if a.liger:
        rows.append(run_peer("peer liger bs32", a.peer, [*peer, "--batch", "32", "--liger"]))
    for batch in a.batches_135m:
        base = common_pt(work, "smollm2-135m", 2048, batch, a.steps) + [
            "peft.finetuning=full",
            "train.compile_layers=true",
        ]
        rows.append(run_ours(f"ours full compile bs{batch} (fp32 master)", work, base))
        rows.append(run_ours(f"ours full compile bs{batch} (pure bf16)", work, base + ["model.dtype=bfloat16"]))
    return rows


def suite_padded(a, work: Path) -> list[dict]:
    """Real Alpaca conversations: ours length-grouped through the CLI vs the padded HF reference."""
    from chatforge.data.readers import read_records
    from chatforge.models.loading import load_tokenizer
    from chatforge.templates import encode_conversation, get_template, prepare_tokenizer

    data = Path(a.alpaca)
    tok = load_tokenizer(a.tokenizer)
    template = get_template("smollm2")
    prepare_tokenizer(tok, template)
    records = list(read_records(str(data)).records)[: a.padded_samples]
    examples = []
    for conv in records:
        enc = encode_conversation(conv, tok, template)
        ids, labels = list(enc.input_ids)[:2048], list(enc.labels())[:2048]
        examples.append((ids, labels))
    ex_path = work / "padded_examples.json"
    ex_path.write_text(json.dumps(examples))
    mean = sum(len(e[0]) for e in examples) / len(examples)
    rows = []
    for liger in [False]:
        cmd = [
            sys.executable,
            __file__,
            "--ref-padded",
            "--examples",
            str(ex_path),
            "--vocab",
            str(len(tok)),
            "--batch",
            "8",
            "--steps",
            str(a.padded_ref_steps),
        ]
        proc = subprocess.run(cmd + (["--liger"] if liger else []), capture_output=True, text=True)
        label = "peer-style HF padded bs8 ckpt" + (" + liger" if liger else "")
        row = {"side": "peer", "label": label, "rc": proc.returncode, "mean_len": round(mean, 1)}
        if proc.returncode == 0:
            row.update(json.loads(proc.stdout.strip().splitlines()[-1]))
        else:
            row["error"] = proc.stderr[-3000:]
        rows.append(emit(row))
    shape = dict(SHAPES["llama2-7b"], vocab_size=len(tok))
    fields = ", ".join(f"{k}: {v}" for k, v in shape.items())
    ours = [
        "model.name_or_path=scratch",
        f"model.tokenizer={a.tokenizer}",
        "model.init={" + fields + "}",
        f"data.train=[{data}]",
        f"data.max_samples={a.padded_samples}",
        "data.max_length=2048",
        "template.name=smollm2",
        "train.batching=length_grouped",
        "train.max_grad_norm=0",
        "train.progress=false",
        "train.tensorboard=false",
        "train.compile_layers=true",
        "train.checkpoint_ratio=1.0",
        *LORA,
    ]
    for batch, steps in a.padded_ours:
        rows.append(
            run_ours(
                f"ours length_grouped bs{batch}", work, ours + [f"train.batch_size={batch}", f"train.max_steps={steps}"]
            )
        )
    return rows


def preset_fields(name: str, vocab: int) -> dict:
    from chatforge.models.presets import apply_preset

    return apply_preset({"preset": name, "vocab_size": vocab}, vocab_size=vocab)


def peer_with_shape(a) -> int:
    """Runs the peer script's own main() with one more entry in its SHAPES table (it has no 124m shape)."""
    spec = importlib.util.spec_from_file_location("peer_baseline", a.peer)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.SHAPES[a.peer_shape] = json.loads(a.peer_shape_fields)
    sys.argv = [a.peer, "--shape", a.peer_shape, *a.peer_args]
    module.main()
    return 0


def run_peer_shape(label: str, a, shape: str, fields: dict, args: list[str]) -> dict:
    own = [str(Path(__file__).resolve()), "--peer", a.peer, "--peer-shape", shape]
    return run_peer(label, own[0], [*own[1:], "--peer-shape-fields", json.dumps(fields), "--", *args])


def token_shards(work: Path, tokens_needed: int) -> Path:
    """Shards written once through the CLI (`chatforge data tokenize`), the way a user prepares a corpus."""
    out = work / f"shards-{tokens_needed}"
    if not (out / "index.json").is_file():
        corpus = text_corpus(work, tokens_needed)
        cmd = [sys.executable, "-m", "chatforge.cli", "data", "tokenize", "--input", str(corpus)]
        cmd += ["--tokenizer", str(tiny_tokenizer_dir(work)), "--output", str(out), "--num-proc", "4"]
        subprocess.run(cmd, check=True, capture_output=True, text=True)
    return out


def suite_pretrain124m(a, work: Path) -> list[dict]:
    rows, vocab = [], 50304
    fields = preset_fields("llama-124m", vocab)
    settings = [(seq, 32 * 1024 // seq) for seq in a.pt_seqs] if not a.tiny else [(128, 2)]
    shape = "llama-124m" if not a.tiny else "tiny"
    for seq, batch in settings:
        peer = ["--mode", "full", "--seq", str(seq), "--batch", str(batch)]
        if not a.tiny:
            if not (a.lean and a.liger):
                rows.append(run_peer_shape(f"peer plain seq{seq} bs{batch}", a, shape, fields, peer))
            if a.liger:
                rows.append(run_peer_shape(f"peer liger seq{seq} bs{batch}", a, shape, fields, [*peer, "--liger"]))
        if a.peer_only:
            continue
        shards = token_shards(work, int(1.6 * seq * batch * (a.steps + 2)) + 4 * seq)
        init = f"model.init={{preset: llama-124m, vocab_size: {vocab}}}" if not a.tiny else init_override("tiny")
        base = [
            "model.name_or_path=scratch",
            init,
            f"data.shards={shards}",
            f"data.max_length={seq}",
            "train.stage=pt",
            "train.batching=packed",
            "peft.finetuning=full",
            f"train.batch_size={batch}",
            f"train.max_steps={a.steps}",
            "train.learning_rate=6e-4",
            "train.max_grad_norm=1.0",
            "train.progress=false",
            "train.tensorboard=false",
            "template.name=chatml",
        ]
        if not a.tiny:
            base.append("train.compile_layers=true")
        else:
            base.append("train.num_threads=1")
        rows.append(run_ours(f"ours pt shards seq{seq} bs{batch} (fp32 master)", work, base))
        if a.no_docmask_row:
            label = f"ours pt shards seq{seq} bs{batch} (no document mask)"
            rows.append(run_ours(label, work, base + ["data.document_mask=false"]))
        if not a.tiny and not a.lean:
            rows.append(
                run_ours(f"ours pt shards seq{seq} bs{batch} (pure bf16)", work, base + ["model.dtype=bfloat16"])
            )
    return rows


def suite_smoke(a, work: Path) -> list[dict]:
    base = common_pt(work, "tiny", 256, 2, 6) + ["peft.finetuning=full", "train.num_threads=1"]
    return [
        run_ours("ours tiny full", work, base),
        run_ours("ours tiny lora", work, common_pt(work, "tiny", 256, 2, 6) + LORA),
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--suite", default="smoke", choices=["7b", "135m", "padded", "pretrain124m", "smoke"])
    ap.add_argument("--tiny", action="store_true", help="--suite pretrain124m: a tiny CPU smoke of the same path")
    ap.add_argument(
        "--pt-seqs",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[1024, 2048],
        help="--suite pretrain124m: sequence lengths (batch = 32k tokens / seq)",
    )
    ap.add_argument(
        "--lean",
        action="store_true",
        help="--suite pretrain124m: only the Liger reference and ours at default precision",
    )
    ap.add_argument("--peer-only", action="store_true", help="--suite pretrain124m: the reference rows alone")
    ap.add_argument(
        "--no-docmask-row",
        action="store_true",
        help="--suite pretrain124m: also ours with data.document_mask=false (plain causal rows, like the peer)",
    )
    ap.add_argument("--peer", default="../shared/bench/hf_peft_baseline.py")
    ap.add_argument("--work", default="runs/bench", help="scratch folder for configs, data and run folders")
    ap.add_argument("--out", help="append JSON lines here")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--alpaca", help="--suite padded: conversations file (e.g. Alpaca as OpenAI messages, .jsonl.gz)")
    ap.add_argument("--tokenizer", help="--suite padded: tokenizer folder")
    ap.add_argument("--padded-samples", type=int, default=4000)
    ap.add_argument("--padded-ref-steps", type=int, default=40)
    ap.add_argument("--no-liger", action="store_true", help="skip the Liger variants even when liger_kernel is there")
    # internal: the padded reference in its own process
    ap.add_argument("--ref-padded", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--examples", help=argparse.SUPPRESS)
    ap.add_argument("--vocab", type=int, default=49152, help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=8, help=argparse.SUPPRESS)
    ap.add_argument("--shape", default="llama2-7b", help=argparse.SUPPRESS)
    ap.add_argument("--liger", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--peer-shape", help=argparse.SUPPRESS)
    ap.add_argument("--peer-shape-fields", help=argparse.SUPPRESS)
    ap.add_argument("peer_args", nargs="*", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.peer_shape:
        return peer_with_shape(a)
    if a.ref_padded:
        print(json.dumps(ref_padded(a)))
        return 0
    a.liger = importlib.util.find_spec("liger_kernel") is not None
    a.variants_7b = [
        ("ours lora compile ckpt 32/32 bs4", ["train.checkpoint_ratio=1.0"]),
        ("ours lora compile no-ckpt bs4", []),
    ]
    a.batches_135m = [32]
    a.padded_ours = [(8, 40)]
    if a.no_liger:
        a.liger = False
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    global OUT_FILE
    OUT_FILE = Path(a.out) if a.out else None
    ENV.update(suite=a.suite, torch=_version("torch"), transformers=_version("transformers"), peft=_version("peft"))
    ENV.update(liger=_version("liger_kernel") if a.liger else None, gpu=_gpu_name())
    suites = {"7b": suite_7b, "135m": suite_135m, "padded": suite_padded, "pretrain124m": suite_pretrain124m}
    rows = {**suites, "smoke": suite_smoke}[a.suite](a, work)
    print(f"\n{'side':5} {'setting':48} {'tok/s':>9} {'MFU':>6} {'peak GiB':>9}  note")
    for r in rows:
        note = r.get("error", "").strip().splitlines()[-1][:80] if r.get("error") else ""
        if r.get("warmup_s") is not None:
            note = f"warm-up {r['warmup_s']} s, {r.get('compile_steps')} compile steps " + note
        print(
            f"{r['side']:5} {r['label']:48} {r.get('tok_s') or '':>9} {r.get('mfu') or '':>6} {r.get('peak_GiB') or '':>9}  {note}"
        )
    return 0


def _version(name: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return None


def _gpu_name() -> str | None:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:
        return None


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
