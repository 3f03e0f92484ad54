"""Train a byte-level BPE tokenizer for pretraining from scratch: `chatforge tokenizer train`.

    chatforge tokenizer train --input novels/*.txt --vocab-size 16000 --output tok/ [--template chatml] [--nfkc]

Built with the `tokenizers` library and saved as a transformers fast-tokenizer folder (loads with `AutoTokenizer` and
`chatforge.models.loading.load_tokenizer`), with the chat template installed by `templates.prepare_tokenizer`.

Design, for Chinese as much as English:
- Byte level: every UTF-8 byte is in the base alphabet, so no text is ever unknown.
- The pre-tokenizer does not assume spaces between words. It cuts text into runs of Han characters, runs of other
  letters (with one leading space, as English words), single digits (numbers are split into digits, which keeps
  arithmetic regular), punctuation runs, and whitespace; BPE then learns multi-character Chinese words inside Han runs.
- Optional NFKC normalisation (`--nfkc`) folds full-width letters and digits to ASCII; off by default because it also
  rewrites Chinese full-width punctuation (，→ ,).
- Special tokens are reserved at the first ids: `<|endoftext|>` (the EOS, put between documents in the token shards,
  also the padding token) and the markers of the chosen chat template (chatml: `<|im_start|>`, `<|im_end|>`).

Every `--heldout-every`-th document of the input is kept out of training; those documents and any `--eval` files are
the held-out text. The report (printed and saved as `training_report.json`) gives the vocabulary size and characters
per token on the held-out Chinese and English text, for this tokenizer and the comparison one (default the embedded
SmolLM2 tokenizer) on the same text.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chatforge.data.shards import TEXT_UNITS, iter_pieces
from chatforge.errors import ChatforgeError, DataError

EOT = "<|endoftext|>"
# Han runs, other-letter runs (one leading space allowed), English clitics, single digits, punctuation/symbol runs
# (with the newlines that follow them), newline runs, and other whitespace (a trailing space stays with the next word).
PRETOKENIZE_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)"
    r"| ?\p{Han}+"
    r"| ?[\p{L}\p{M}&&[^\p{Han}]]+"
    r"|\p{N}"
    r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+"
    r"|\s+(?!\S)"
    r"|\s+"
)
REPORT = "training_report.json"


def build_tokenizer(nfkc: bool = False):
    """An untrained byte-level BPE `tokenizers.Tokenizer` with chatforge's pre-tokenizer."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    tok = Tokenizer(models.BPE())
    if nfkc:
        tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    return tok


def reserved_tokens(template: str, extra: Iterable[str] = ()) -> list[str]:
    """EOT, then the chat template's markers, then any extra tokens (no duplicates, in that order)."""
    from chatforge.templates import get_template

    out: list[str] = []
    for t in [EOT, *get_template(template).special_tokens, *extra]:
        if t and t not in out:
            out.append(t)
    return out


def script_of(text: str) -> str:
    """'zh' when at least 30% of the non-space characters are Han, 'en' when at least 50% are ASCII letters, else
    'other': how held-out documents are grouped in the report."""
    chars = [c for c in text if not c.isspace()]
    if not chars:
        return "other"
    han = sum(1 for c in chars if "\u4e00" <= c <= "\u9fff" or "\u3400" <= c <= "\u4dbf" or "\uf900" <= c <= "\ufaff")
    if han >= 0.3 * len(chars):
        return "zh"
    latin = sum(1 for c in chars if c.isascii() and c.isalpha())
    return "en" if latin >= 0.5 * len(chars) else "other"


@dataclass
class HeldOut:
    """Held-out text per script, capped at `max_chars` characters each (memory stays bounded)."""

    max_chars: int
    texts: dict[str, list[str]] = field(default_factory=lambda: {"zh": [], "en": [], "other": []})
    chars: dict[str, int] = field(default_factory=lambda: {"zh": 0, "en": 0, "other": 0})

    def add(self, text: str) -> None:
        script = script_of(text)
        if self.chars[script] < self.max_chars:
            self.texts[script].append(text)
            self.chars[script] += len(text)


def chars_per_token(tokenizer, texts: list[str]) -> dict[str, Any] | None:
    """Characters per token of `texts` (plain text: special-token spellings are not matched, no BOS/EOS added)."""
    if not texts:
        return None
    backend = tokenizer.backend_tokenizer
    previous = backend.encode_special_tokens
    try:
        backend.encode_special_tokens = True
        tokens = sum(len(e.ids) for e in backend.encode_batch_fast(texts, add_special_tokens=False))
    finally:
        backend.encode_special_tokens = previous
    chars = sum(len(t) for t in texts)
    return {"chars": chars, "tokens": tokens, "chars_per_token": round(chars / max(1, tokens), 3)}


def train_tokenizer(
    files: list[str | Path],
    vocab_size: int,
    output: str | Path,
    *,
    template: str = "chatml",
    nfkc: bool = False,
    min_frequency: int = 2,
    text_unit: str = "paragraph",
    text_field: str = "text",
    heldout_every: int = 50,
    heldout_chars: int = 2_000_000,
    eval_files: list[str | Path] = (),
    max_train_chars: int | None = None,
    extra_special: Iterable[str] = (),
    compare: list[str] = ("smollm2-135m-instruct",),
    overwrite: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Train, save to `output` (atomically), and return the report (see the module docstring)."""
    from tokenizers import pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from chatforge.templates import get_template, prepare_tokenizer

    started = time.time()
    get_template(template)  # fail early on a bad name
    paths = [Path(f) for f in files]
    evals = [Path(f) for f in eval_files]
    if not paths:
        raise ChatforgeError("no input files given")
    for p in [*paths, *evals]:
        if not p.is_file():
            raise DataError("input file not found", file=str(p), reason="missing")
    specials = reserved_tokens(template, extra_special)
    if vocab_size < 256 + len(specials):
        raise ChatforgeError(f"--vocab-size must be at least {256 + len(specials)} (256 bytes + the special tokens)")
    if heldout_every < 0 or heldout_every == 1:
        raise ChatforgeError("--heldout-every must be 0 (none) or at least 2")
    output = Path(output)
    if output.exists() and not overwrite and (not output.is_dir() or any(output.iterdir())):
        raise ChatforgeError(f"output {output} already exists and is not empty; pass --overwrite to replace it")

    held = HeldOut(heldout_chars)
    stats = {"train_documents": 0, "train_chars": 0, "heldout_documents": 0}

    def training_text() -> Iterator[str]:
        n = 0
        for path in paths:
            for piece in iter_pieces(path, text_unit=text_unit, text_field=text_field):
                n += 1
                if heldout_every and n % heldout_every == 0:
                    held.add(piece.text)
                    stats["heldout_documents"] += 1
                    continue
                if max_train_chars is not None and stats["train_chars"] >= max_train_chars:
                    continue  # keep reading: the held-out documents come from the whole input
                stats["train_documents"] += 1
                stats["train_chars"] += len(piece.text)
                yield piece.text

    tok = build_tokenizer(nfkc)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=progress,
    )
    tok.train_from_iterator(training_text(), trainer=trainer)
    if stats["train_documents"] == 0:
        raise ChatforgeError("the input files hold no training text")
    train_seconds = time.time() - started
    for path in evals:
        for piece in iter_pieces(path, text_unit=text_unit, text_field=text_field):
            held.add(piece.text)

    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOT, pad_token=EOT)
    prepare_tokenizer(fast, template)
    extra = [t for t in extra_special if t not in fast.all_special_tokens]
    if extra:
        fast.add_special_tokens({"additional_special_tokens": extra}, replace_extra_special_tokens=False)

    report: dict[str, Any] = {
        "vocab_size": len(fast),
        "requested_vocab_size": vocab_size,
        "special_tokens": {t: fast.convert_tokens_to_ids(t) for t in specials},
        "template": template,
        "nfkc": nfkc,
        "inputs": [str(p) for p in paths],
        "eval_files": [str(p) for p in evals],
        **stats,
        "train_seconds": round(train_seconds, 2),
        "heldout": {},
    }
    for script in ("zh", "en", "other"):
        texts = held.texts[script]
        if not texts:
            continue
        entry = {"ours": chars_per_token(fast, texts)}
        for spec in compare:
            entry[spec] = _compare(spec, texts)
        report["heldout"][script] = entry

    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-", dir=output.parent))
    try:
        fast.save_pretrained(str(tmp))
        (tmp / REPORT).write_text(json.dumps(report, ensure_ascii=False, indent=1), encoding="utf-8")
        if output.exists():  # swap in the new folder first, then delete the old one
            old = output.with_name(f".{output.name}.old-{tmp.name}")
            output.rename(old)
            tmp.rename(output)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    report["seconds"] = round(time.time() - started, 2)
    return report


_COMPARE_CACHE: dict[str, Any] = {}


def _compare(spec: str, texts: list[str]) -> dict[str, Any]:
    """Characters per token of another tokenizer on the same text, or why it could not be loaded."""
    from chatforge.models.loading import load_tokenizer

    try:
        if spec not in _COMPARE_CACHE:
            _COMPARE_CACHE[spec] = load_tokenizer(spec)
        other = _COMPARE_CACHE[spec]
        result = chars_per_token(other, texts) or {}
        return {**result, "vocab_size": len(other)}
    except ChatforgeError as err:
        return {"unavailable": str(err)}


def format_report(report: dict[str, Any]) -> str:
    """The report as a few lines for the terminal."""
    lines = [
        f"vocabulary: {report['vocab_size']} tokens (requested {report['requested_vocab_size']}; "
        f"special: {', '.join(f'{t}={i}' for t, i in report['special_tokens'].items())})",
        f"trained on {report['train_documents']:,} documents, {report['train_chars']:,} characters in "
        f"{report['train_seconds']:.1f} s; held out {report['heldout_documents']:,} documents",
    ]
    if report["vocab_size"] < report["requested_vocab_size"]:
        lines.append("note: the corpus ran out of merges before the requested size (too little text)")
    for script, entry in report["heldout"].items():
        parts = []
        for name, res in entry.items():
            if "unavailable" in res:
                parts.append(f"{name}: unavailable ({res['unavailable']})")
            else:
                vocab = f", vocab {res['vocab_size']}" if "vocab_size" in res else ""
                parts.append(f"{name}: {res['chars_per_token']:.2f} chars/token{vocab}")
        chars = entry["ours"]["chars"]
        lines.append(f"held-out {script} ({chars:,} chars): " + "; ".join(parts))
    if not report["heldout"]:
        lines.append("no held-out text (use --heldout-every or --eval)")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: chatforge tokenizer train --input FILES... --vocab-size N --output DIR [options]\n")
        print("  train    train a byte-level BPE tokenizer (Chinese-ready) with a chat template's special tokens")
        return 0
    if argv[0] != "train":
        print(f"chatforge tokenizer: unknown subcommand {argv[0]!r} (expected: train)", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog="chatforge tokenizer train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", nargs="+", required=True, help=".txt / .jsonl files (optionally .gz)")
    parser.add_argument("--vocab-size", type=int, required=True, help="total vocabulary, special tokens included")
    parser.add_argument("--output", required=True, help="folder for the transformers tokenizer")
    parser.add_argument(
        "--template", default="chatml", help="chat template whose markers are reserved (default chatml)"
    )
    parser.add_argument("--nfkc", action="store_true", help="NFKC-normalise text (folds full-width forms)")
    parser.add_argument("--min-frequency", type=int, default=2, help="minimum pair count for a merge (default 2)")
    parser.add_argument(
        "--text-unit", choices=TEXT_UNITS, default="paragraph", help=".txt documents (default paragraph)"
    )
    parser.add_argument("--text-field", default="text", help=".jsonl field holding the text (default text)")
    parser.add_argument("--heldout-every", type=int, default=50, help="hold out every Nth document (0: none)")
    parser.add_argument("--heldout-chars", type=int, default=2_000_000, help="held-out characters kept per script")
    parser.add_argument("--eval", nargs="*", default=[], help="extra held-out files, never trained on")
    parser.add_argument("--max-train-chars", type=int, default=None, help="train on at most this many characters")
    parser.add_argument("--special", nargs="*", default=[], help="more special tokens to reserve")
    parser.add_argument(
        "--compare",
        nargs="*",
        default=["smollm2-135m-instruct"],
        help="tokenizers to compare on the held-out text (default the embedded SmolLM2; none: skip)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--progress", action="store_true", help="show the trainer's progress bar")
    args = parser.parse_args(argv[1:])  # fmt: skip
    compare = [c for c in args.compare if c.lower() != "none"]
    report = train_tokenizer(
        args.input,
        args.vocab_size,
        args.output,
        template=args.template,
        nfkc=args.nfkc,
        min_frequency=args.min_frequency,
        text_unit=args.text_unit,
        text_field=args.text_field,
        heldout_every=args.heldout_every,
        heldout_chars=args.heldout_chars,
        eval_files=args.eval,
        max_train_chars=args.max_train_chars,
        extra_special=args.special,
        compare=compare,
        overwrite=args.overwrite,
        progress=args.progress,
    )
    print(format_report(report))
    print(f"saved to {args.output} ({report['seconds']:.1f} s in all)")
    return 0
