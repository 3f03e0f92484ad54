"""`chatforge data show FILE`: print conversations as the model is trained on them, coloured by the loss mask.

Trained tokens are green and untrained tokens grey when stdout is a terminal; otherwise (pipes, logs, tests) trained
spans are wrapped in `[[` `]]` so the mask stays visible in plain text. Each record ends with its token counts.
`render_masked` is the shared facility: the training code uses it to log what a batch actually trains on.

    chatforge data show data.jsonl --limit 2
    chatforge data show glaive_toolcall_en_demo --dataset-info ../shared/data/llamafactory_demo --template chatml
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from chatforge.data.readers import ReadResult, read_records
from chatforge.data.schema import Conversation, PreferencePair, TextDoc
from chatforge.errors import ChatforgeError

GREEN, GREY, RESET = "\x1b[32m", "\x1b[90m", "\x1b[0m"
OPEN, CLOSE = "[[", "]]"
DEFAULT_MODEL = "smollm2-135m-instruct"


def _groups(trained: Sequence[bool]) -> list[tuple[int, int, bool]]:
    """Runs of consecutive tokens with the same flag, as (start, end, flag)."""
    runs: list[tuple[int, int, bool]] = []
    start = 0
    for i in range(1, len(trained) + 1):
        if i == len(trained) or trained[i] != trained[start]:
            runs.append((start, i, bool(trained[start])))
            start = i
    return runs


def render_masked(ids: Sequence[int], trained: Sequence[bool], tokenizer, color: bool) -> str:
    """The decoded token sequence with trained runs marked: ANSI green/grey if `color`, else `[[trained]]`.

    Each run is the difference between decoding the prefix up to its end and up to its start, so decoders that strip
    a leading space or merge bytes (SentencePiece, byte-level BPE) render a run exactly as it reads in context; when
    a prefix does not decode stably (a character split across runs) the run is decoded alone.
    """
    if len(ids) != len(trained):
        raise ValueError(f"ids and trained differ in length ({len(ids)} vs {len(trained)})")
    out = []
    before = ""
    for start, end, flag in _groups(trained):
        upto = tokenizer.decode(list(ids[:end]), skip_special_tokens=False)
        if upto.startswith(before):
            text = upto[len(before) :]
        else:
            text = tokenizer.decode(list(ids[start:end]), skip_special_tokens=False)
        before = upto
        if color:
            out.append(f"{GREEN if flag else GREY}{text}{RESET}")
        else:
            out.append(f"{OPEN}{text}{CLOSE}" if flag else text)
    return "".join(out)


def _encodings(record, tokenizer, template, mask: str) -> list[tuple[str, list[int], list[bool]]]:
    """(label, ids, trained) for each sequence a record trains: one per conversation, two per preference pair."""
    from chatforge.templates import encode_conversation, encode_text

    if isinstance(record, Conversation):
        enc = encode_conversation(record, tokenizer, template, mask=mask)
        return [("", enc.input_ids, enc.trained)]
    if isinstance(record, PreferencePair):
        out = []
        for label, reply in (("chosen", record.chosen), ("rejected", record.rejected)):
            conv = Conversation(record.prompt.messages + [reply], tools=record.prompt.tools)
            enc = encode_conversation(conv, tokenizer, template, mask="last_assistant")
            out.append((label, enc.input_ids, enc.trained))
        return out
    if isinstance(record, TextDoc):
        ids = encode_text(record.text, tokenizer)
        return [("", ids, [True] * len(ids))]
    raise TypeError(f"cannot show a {type(record).__name__}")


def _where(record) -> str:
    meta = record.meta
    loc = f"line {meta['line']}" if "line" in meta else f"record {meta['record']}" if "record" in meta else ""
    return " ".join(str(x) for x in (meta.get("dataset") or meta.get("source", ""), loc) if x)


def show_records(
    result: ReadResult, tokenizer, template, *, mask: str = "all_assistant", limit: int | None = None, color: bool
) -> str:
    """The text `chatforge data show` prints for these records (the first `limit` of them)."""
    lines = []
    total = trained_total = 0
    records = result.records[:limit] if limit is not None else result.records
    for n, record in enumerate(records, start=1):
        for label, ids, trained in _encodings(record, tokenizer, template, mask):
            n_trained = sum(trained)
            total, trained_total = total + len(ids), trained_total + n_trained
            title = f"#{n}{' ' + label if label else ''} ({_where(record)})"
            lines.append(f"===== {title} =====")
            lines.append(render_masked(ids, trained, tokenizer, color))
            lines.append(f"----- {len(ids)} tokens, {n_trained} trained -----")
            lines.append("")
    share = f" ({100 * trained_total / total:.1f}%)" if total else ""
    lines.append(
        f"{len(records)} of {len(result.records)} records shown: {total} tokens, {trained_total} trained{share}"
    )
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    from chatforge.templates import MASK_MODES, TEMPLATES

    p = argparse.ArgumentParser(
        prog="chatforge data show", description="Print records coloured by which tokens are trained."
    )
    p.add_argument("file", help="a data file, or a dataset name with --dataset-info")
    p.add_argument(
        "--template",
        metavar="NAME|FILE.yaml",
        help=f"chat template: {', '.join(TEMPLATES)}, an LLaMA-Factory name, or a YAML template (default: the model's)",
    )
    p.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"tokenizer: HF folder, .gguf or name (default {DEFAULT_MODEL})"
    )
    p.add_argument("--limit", type=int, default=3, help="how many records to show (default 3; 0 = all)")
    p.add_argument("--format", default="auto", help="alpaca, sharegpt, openai, preference, text (default: auto)")
    p.add_argument("--mask", default="all_assistant", choices=list(MASK_MODES), help="which turns are trained")
    p.add_argument("--dataset-info", help="LLaMA-Factory dataset_info.json (FILE is then a dataset name)")
    p.add_argument("--dataset-dir", help="folder the registry's file names must stay in (default: its own folder)")
    p.add_argument("--on-error", default="raise", choices=["raise", "skip"], help="bad records: stop, or skip+count")
    p.add_argument("--color", default="auto", choices=["auto", "always", "never"], help="ANSI colours (auto: on a TTY)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.limit < 0:
        raise ChatforgeError(f"--limit must be >= 0, got {args.limit}")
    result = read_records(args.file, format=args.format, on_error=args.on_error, dataset_info=args.dataset_info,
                          dataset_dir=args.dataset_dir)  # fmt: skip
    if not result.records:
        raise ChatforgeError(f"{args.file}: no records to show ({result.summary()})")
    from chatforge.models.loading import default_template_for, load_tokenizer
    from chatforge.templates import get_template, prepare_tokenizer

    tokenizer = load_tokenizer(args.model)
    template = get_template(args.template or default_template_for(tokenizer))
    # Only in memory: markers a template needs but the tokenizer lacks are added so the mask can be shown at all.
    added = prepare_tokenizer(tokenizer, template)
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    print(
        f"model {args.model}, template {template.name}, mask {args.mask}"
        + (f", {added} marker tokens added" if added else "")
    )
    try:
        print(show_records(result, tokenizer, template, mask=args.mask, limit=args.limit or None, color=color))
    except BrokenPipeError:
        # `chatforge data show ... | head` closed the pipe: not an error; silence the flush at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    if result.skipped:
        print(result.summary(), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
