"""`chatforge data clean`: normalise, mask PII, filter, deduplicate, balance and split a dataset, with a report.

    chatforge data clean --input data.json --output out/ [--config clean.yaml] [dedup.threshold=0.9 ...]

Steps, in order (each can be switched off in the config): normalize -> pii -> empty-message check -> blocklist ->
length -> language -> quality (off by default) -> exact dedup -> near dedup -> semantic dedup (off by default) ->
balance -> split. `--engine ray` runs the per-record steps (up to quality) on Ray Data with the same output.
Works on every format `read_records` reads
(alpaca, sharegpt, openai, preference, text); records are written back as chatforge JSONL (conversations as OpenAI
`messages`, preference pairs as `messages` + `chosen`/`rejected`, text as `text`). Outputs: `train.jsonl`,
`val.jsonl`, `test.jsonl` (or `clean.jsonl` without split), `removed.jsonl` (every removed record: index, step,
reason, the record it duplicates), `report.json` (counts per step and reason, timings, examples) and the resolved
`clean_config.yaml`. Everything random uses `seed`, so a run is reproducible.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from chatforge.data.cleaning.balance import BalanceConfig, downsample, key_value
from chatforge.data.cleaning.dedup import DedupConfig, exact_duplicates, near_duplicates
from chatforge.data.cleaning.filters import (
    BlocklistConfig,
    LanguageConfig,
    LengthConfig,
    blocklist_reason,
    compile_blocklist,
    detect_language,
    length_reason,
)
from chatforge.data.cleaning.normalize import NormalizeConfig, normalize_text
from chatforge.data.cleaning.pii import PIIConfig, mask_pii
from chatforge.data.cleaning.quality import QualityConfig, quality_reason, refusal_pattern
from chatforge.data.cleaning.semantic import SemanticConfig, run_semantic
from chatforge.data.cleaning.split import SplitConfig, stratified_split
from chatforge.data.schema import Conversation, Message, PreferencePair, TextDoc
from chatforge.errors import ChatforgeError

Record = Conversation | PreferencePair | TextDoc


@dataclass
class CleanConfig:
    seed: int = 0
    format: str = "auto"
    on_error: Literal["raise", "skip"] = "raise"
    examples_per_reason: int = field(default=3, metadata={"min": 0})
    normalize: NormalizeConfig = field(default_factory=NormalizeConfig)
    pii: PIIConfig = field(default_factory=PIIConfig)
    blocklist: BlocklistConfig = field(default_factory=BlocklistConfig)
    length: LengthConfig = field(default_factory=LengthConfig)
    language: LanguageConfig = field(default_factory=LanguageConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    semantic: SemanticConfig = field(default_factory=SemanticConfig)
    balance: BalanceConfig = field(default_factory=BalanceConfig)
    split: SplitConfig = field(default_factory=SplitConfig)

    def check_config(self) -> list[tuple[str, str]]:
        problems = []
        if self.length.unit == "tokens" and not self.length.tokenizer:
            problems.append(("length.tokenizer", "needed when length.unit is 'tokens' (e.g. smollm2-135m-instruct)"))
        if len(self.split.names) != len(self.split.ratios):
            problems.append(("split.ratios", f"give one ratio per name in split.names {self.split.names}"))
        if any(r < 0 for r in self.split.ratios) or sum(self.split.ratios) <= 0:
            problems.append(("split.ratios", "ratios must be non-negative and not all zero"))
        if self.dedup.num_perm & (self.dedup.num_perm - 1):
            problems.append(("dedup.num_perm", f"must be a power of two, got {self.dedup.num_perm}"))
        bad = set(self.language.keep) - {"zh", "en", "other"}
        if bad:
            problems.append(("language.keep", f"unknown language(s) {sorted(bad)}; use zh, en, other"))
        bad = set(self.pii.kinds) - {"email", "id_card", "bank_card", "mobile"}
        if bad:
            problems.append(("pii.kinds", f"unknown kind(s) {sorted(bad)}; use email, id_card, bank_card, mobile"))
        return problems


# ------------------------------------------------------------------------------------------------ record text access


def _messages(rec: Record) -> list[Message]:
    if isinstance(rec, Conversation):
        return rec.messages
    if isinstance(rec, PreferencePair):
        return [*rec.prompt.messages, rec.chosen, rec.rejected]
    return []


def record_text(rec: Record) -> str:
    """All the text of a record, one message per line (what filters and dedup look at)."""
    if isinstance(rec, TextDoc):
        return rec.text
    return "\n".join(m.content for m in _messages(rec))


def map_texts(rec: Record, fn: Callable[[str], str], *, skip_tool: bool = False) -> None:
    """Apply `fn` to every text of the record in place (tool observations optionally left as they are)."""
    if isinstance(rec, TextDoc):
        rec.text = fn(rec.text)
        return
    for m in _messages(rec):
        if m.content and not (skip_tool and m.role == "tool"):
            m.content = fn(m.content)


def _meta(rec: Record) -> dict[str, Any]:
    return rec.meta


def _reply(rec: Record) -> str:
    """The text a record trains the model to say last: the final assistant turn, or the chosen reply."""
    if isinstance(rec, PreferencePair):
        return rec.chosen.content
    if isinstance(rec, Conversation):
        return next((m.content for m in reversed(rec.messages) if m.role == "assistant"), "")
    return rec.text


def _dedup_key(rec: Record) -> str:
    data = record_to_dict(rec)
    data.pop("meta", None)
    return json.dumps(data, ensure_ascii=False, sort_keys=True)


def record_to_dict(rec: Record) -> dict[str, Any]:
    """The JSON chatforge writes for a record; `read_records` reads it back in the same format."""
    if isinstance(rec, Conversation):
        return rec.to_dict()
    if isinstance(rec, PreferencePair):
        out: dict[str, Any] = {
            "messages": [m.to_dict() for m in rec.prompt.messages],
            "chosen": rec.chosen.to_dict(),
            "rejected": rec.rejected.to_dict(),
        }
        if rec.prompt.tools:
            out["tools"] = [{"type": "function", "function": t} for t in rec.prompt.tools]
        meta = {**rec.prompt.meta, **rec.meta}
        if meta:
            out["meta"] = meta
        return out
    out = {"text": rec.text}
    if rec.meta:
        out["meta"] = rec.meta
    return out


# ---------------------------------------------------------------------------------------------------------- pipeline


@dataclass
class CleanResult:
    splits: dict[str, list[Record]]
    removed: list[dict[str, Any]]
    report: dict[str, Any]


def _empty_message(rec: Record) -> bool:
    if isinstance(rec, TextDoc):
        return not rec.text.strip()
    return any(m.role in ("user", "assistant") and not m.content.strip() and not m.tool_calls for m in _messages(rec))


# Steps that judge one record at a time, in pipeline order: they run in chunks (on Ray with --engine ray) and give
# the same verdicts wherever a chunk runs. Everything after them (dedup, balance, split) compares records and runs once.
RECORD_STEPS = ("empty", "blocklist", "length", "language", "quality")


@dataclass
class RecordPass:
    """What the per-record steps did to one chunk: texts changed in place, and a verdict per removed record."""

    records: list[Record]
    verdicts: dict[int, tuple[str, str, dict[str, Any]]] = field(default_factory=dict)  # index -> step, reason, extra
    counts: dict[str, Counter] = field(default_factory=dict)  # normalize rules / pii kinds
    changed: Counter = field(default_factory=Counter)
    seconds: Counter = field(default_factory=Counter)


def record_pass(records: list[Record], start: int, cfg: CleanConfig, tokenizer: Any = None) -> RecordPass:
    """Normalise, mask PII and judge records[k] (global index start + k) by every per-record filter."""
    out = RecordPass(records)
    alive = list(range(len(records)))
    for name, enabled, fn_factory, skip_tool in (
        ("normalize", cfg.normalize.enabled, lambda c: lambda t: normalize_text(t, cfg.normalize, c), True),
        ("pii", cfg.pii.enabled, lambda c: lambda t: mask_pii(t, cfg.pii, c), False),
    ):
        if not enabled:
            continue
        t0 = time.perf_counter()
        counts: Counter = Counter()
        fn = fn_factory(counts)
        for k in alive:
            before = record_text(records[k])
            map_texts(records[k], fn, skip_tool=skip_tool)
            out.changed[name] += record_text(records[k]) != before
        out.counts[name] = counts
        out.seconds[name] += time.perf_counter() - t0

    def judge(step: str, reasons: dict[int, str | tuple[str, dict]], t0: float) -> None:
        nonlocal alive
        for k, r in reasons.items():
            reason, extra = r if isinstance(r, tuple) else (r, {})
            out.verdicts[start + k] = (step, reason, extra)
        alive = [k for k in alive if k not in reasons]
        out.seconds[step] += time.perf_counter() - t0

    t0 = time.perf_counter()
    judge("empty", {k: "empty message after normalisation" for k in alive if _empty_message(records[k])}, t0)
    texts = {k: record_text(records[k]) for k in alive}

    pattern = compile_blocklist(cfg.blocklist)
    if pattern is not None:
        t0 = time.perf_counter()
        judge("blocklist", {k: r for k in alive if (r := blocklist_reason(texts[k], pattern))}, t0)

    t0 = time.perf_counter()
    if cfg.length.unit == "tokens":
        if tokenizer is None:
            from chatforge.models.loading import load_tokenizer

            tokenizer = load_tokenizer(cfg.length.tokenizer)
        enc = tokenizer([texts[k] for k in alive], add_special_tokens=False)["input_ids"] if alive else []
        sizes = dict(zip(alive, (len(e) for e in enc)))
    else:
        sizes = {k: len(texts[k]) for k in alive}
    judge("length", {k: r for k in alive if (r := length_reason(sizes[k], cfg.length))}, t0)

    if cfg.language.keep:
        t0 = time.perf_counter()
        keep = set(cfg.language.keep)
        reasons = {}
        for k in alive:
            lang = detect_language(texts[k], cfg.language.zh_min_ratio)
            if lang not in keep:
                reasons[k] = f"language {lang} not in {sorted(keep)}"
        judge("language", reasons, t0)

    if cfg.quality.enabled:
        t0 = time.perf_counter()
        refusal = refusal_pattern(cfg.quality)
        reasons = {}
        for k in alive:
            if (q := quality_reason(_reply(records[k]), cfg.quality, refusal)) is not None:
                reasons[k] = (q[0], {"score": q[1]})
        judge("quality", reasons, t0)
    return out


def local_record_pass(records: list[Record], cfg: CleanConfig, tokenizer: Any = None) -> RecordPass:
    return record_pass(records, 0, cfg, tokenizer)


def merge_passes(parts: list[tuple[int, RecordPass]]) -> RecordPass:
    """One RecordPass from chunk results (in any order): records by start index, verdicts and counts summed."""
    parts = sorted(parts, key=lambda p: p[0])
    out = RecordPass([rec for _, p in parts for rec in p.records])
    for _, p in parts:
        out.verdicts.update(p.verdicts)
        for name, c in p.counts.items():
            out.counts.setdefault(name, Counter()).update(c)
        out.changed.update(p.changed)
        out.seconds.update(p.seconds)
    return out


def clean_records(
    records: list[Record],
    cfg: CleanConfig,
    tokenizer: Any = None,
    *,
    record_pass_fn: Callable[[list[Record], CleanConfig, Any], RecordPass] = local_record_pass,
    encoder: Any = None,
) -> CleanResult:
    """Run the pipeline and return the splits, the removed list and the report. `record_pass_fn` runs the per-record
    steps (in this process by default; `chatforge.data.cleaning.distributed.ray_record_pass` on Ray); records may be
    modified in place, and the ones it returns are the ones kept."""
    steps: list[dict[str, Any]] = []
    removed: list[dict[str, Any]] = []
    alive = list(range(len(records)))
    t_all = time.perf_counter()

    def drop(step: str, reasons: dict[int, str], extra: dict[int, dict] | None = None, seconds: float = 0.0) -> None:
        nonlocal alive
        counts = Counter(reasons.values())
        examples: dict[str, list] = {}
        for i in sorted(reasons):
            entry = {"index": i, "step": step, "reason": reasons[i], **((extra or {}).get(i, {}))}
            entry["text"] = record_text(records[i])[:200]
            removed.append(entry)
            ex = examples.setdefault(reasons[i], [])
            if len(ex) < cfg.examples_per_reason:
                ex.append(entry)
        before = len(alive)
        alive = [i for i in alive if i not in reasons]
        steps.append(
            {
                "step": step,
                "before": before,
                "removed": before - len(alive),
                "after": len(alive),
                "reasons": dict(counts.most_common()),
                "examples": examples,
                "seconds": round(seconds, 3),
            }
        )

    passed = record_pass_fn(records, cfg, tokenizer)
    if len(passed.records) != len(records):
        raise ChatforgeError(f"record pass returned {len(passed.records)} records for {len(records)}")
    records = passed.records
    # 1. normalisation and 2. PII masking change texts; they remove nothing.
    for name, key, enabled in (("normalize", "rules", cfg.normalize.enabled), ("pii", "masked", cfg.pii.enabled)):
        if enabled:
            steps.append(
                {
                    "step": name,
                    "records_changed": passed.changed[name],
                    key: dict(passed.counts.get(name, Counter()).most_common()),
                    "seconds": round(passed.seconds[name], 3),
                }
            )
    enabled_steps = {
        "empty": True,
        "blocklist": compile_blocklist(cfg.blocklist) is not None,
        "length": True,
        "language": bool(cfg.language.keep),
        "quality": cfg.quality.enabled,
    }
    for step in RECORD_STEPS:
        if not enabled_steps[step]:
            continue
        mine = {i: v for i, v in passed.verdicts.items() if v[0] == step}
        drop(
            step,
            {i: v[1] for i, v in mine.items()},
            {i: v[2] for i, v in mine.items() if v[2]},
            seconds=passed.seconds[step],
        )
    texts = {i: record_text(records[i]) for i in alive}

    if cfg.dedup.exact:
        t0 = time.perf_counter()
        # The whole record minus its meta (source file, line): roles, tool calls, chosen and rejected all count, so
        # the same words said by a different speaker, or a pair with another rejected reply, are not duplicates.
        keys = [_dedup_key(records[i]) for i in alive]
        dups = exact_duplicates(keys)
        drop(
            "exact_dedup",
            {alive[k]: "exact duplicate" for k in dups},
            {alive[k]: {"duplicate_of": alive[v]} for k, v in dups.items()},
            seconds=time.perf_counter() - t0,
        )

    if cfg.dedup.near:
        t0 = time.perf_counter()
        near = near_duplicates([texts[i] for i in alive], cfg.dedup, replies=[_reply(records[i]) for i in alive])
        drop(
            "near_dedup",
            {alive[k]: f"near duplicate (Jaccard >= {cfg.dedup.threshold})" for k in near},
            {alive[k]: {"duplicate_of": alive[j], "jaccard": round(s, 3)} for k, (j, s) in near.items()},
            seconds=time.perf_counter() - t0,
        )

    if cfg.semantic.enabled:
        t0 = time.perf_counter()
        sem, info = run_semantic([texts[i] for i in alive], cfg.semantic, encoder)
        reason = f"semantic duplicate (cosine >= {info['threshold']})"
        drop(
            "semantic_dedup",
            {alive[k]: reason for k in sem},
            {
                alive[k]: {"duplicate_of": alive[j], "similarity": round(s, 4), "duplicate_text": texts[alive[j]][:200]}
                for k, (j, s) in sem.items()
            },
            seconds=time.perf_counter() - t0,
        )
        steps[-1].update(info)

    if cfg.balance.key:
        t0 = time.perf_counter()
        labels = [key_value(_meta(records[i]), cfg.balance.key) for i in alive]
        keep_pos, per_class = downsample(labels, cfg.balance, cfg.seed)
        kept = {alive[k] for k in keep_pos}
        drop(
            "balance",
            {i: f"downsampled class {labels[k]!r} of {cfg.balance.key}" for k, i in enumerate(alive) if i not in kept},
            seconds=time.perf_counter() - t0,
        )
        steps[-1]["classes"] = per_class

    if cfg.split.enabled:
        labels = [key_value(_meta(records[i]), cfg.split.key) if cfg.split.key else "" for i in alive]
        parts = stratified_split(labels, cfg.split.ratios, cfg.seed)
        splits = {name: [records[alive[k]] for k in part] for name, part in zip(cfg.split.names, parts)}
        split_report: dict[str, Any] = {"key": cfg.split.key, "counts": {n: len(v) for n, v in splits.items()}}
        if cfg.split.key:
            split_report["classes"] = {
                name: dict(Counter(labels[k] for k in part)) for name, part in zip(cfg.split.names, parts)
            }
    else:
        splits = {"clean": [records[i] for i in alive]}
        split_report = {"counts": {"clean": len(alive)}}

    report = {
        "records_in": len(records),
        "records_out": len(alive),
        "removed_total": len(records) - len(alive),
        "steps": steps,
        "split": split_report,
        "seconds": round(time.perf_counter() - t_all, 3),
    }
    return CleanResult(splits, removed, report)


def write_outputs(
    result: CleanResult, out_dir: Path, cfg: CleanConfig | None = None, *, overwrite: bool = False
) -> None:
    """Write every output into a temp sibling folder and rename it to `out_dir` only when all are complete, so a
    killed run leaves no `train.jsonl` that looks finished (at most a `.tmp-*` folder, removed by the next run).

    An existing non-empty `out_dir` is replaced only with `overwrite` and only if it is an earlier `data clean`
    output (it holds clean_config.yaml); an empty one is replaced silently.
    """
    from chatforge.config import save_config
    from chatforge.io import atomic_dir

    check_output_dir(out_dir, overwrite)
    with atomic_dir(out_dir, replace=True) as tmp:
        for name, recs in result.splits.items():
            with (tmp / f"{name}.jsonl").open("w", encoding="utf-8") as f:
                for rec in recs:
                    f.write(json.dumps(record_to_dict(rec), ensure_ascii=False) + "\n")
        with (tmp / "removed.jsonl").open("w", encoding="utf-8") as f:
            for entry in result.removed:
                f.write(json.dumps(entry, ensure_ascii=False) + "\n")
        (tmp / "report.json").write_text(json.dumps(result.report, ensure_ascii=False, indent=2) + "\n", "utf-8")
        if cfg is not None:
            save_config(cfg, tmp / "clean_config.yaml")


def check_output_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse a file, or a non-empty folder unless `overwrite` and it is an earlier `data clean` output."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ChatforgeError(f"--output {out_dir} is a file, not a folder")
    if Path.cwd().resolve().is_relative_to(out_dir.resolve()):
        raise ChatforgeError(f"--output {out_dir} is (or holds) the current folder; name a new folder for the output")
    if not any(p for p in out_dir.iterdir() if not p.name.startswith(".tmp-")):
        return
    if not overwrite:
        raise ChatforgeError(
            f"--output {out_dir} is not empty; choose a new folder, or pass --overwrite to replace an earlier "
            "`data clean` output"
        )
    if not (out_dir / "clean_config.yaml").is_file():
        raise ChatforgeError(
            f"--output {out_dir} holds files that `data clean` did not write (no clean_config.yaml); --overwrite "
            "only replaces an earlier `data clean` output"
        )


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="chatforge data clean",
        description=__doc__.split("\n\n")[0],
        epilog="Overrides are dotted config keys, e.g. dedup.threshold=0.9 language.keep=[zh] split.key=answerable",
    )
    p.add_argument("--input", required=True, action="append", help="data file or folder (repeatable)")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--config", help="YAML config (see CleanConfig); defaults apply to everything not given")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier `data clean` output in --output")
    p.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="ray: the per-record steps run on Ray Data (extra `ray`); same output as local",
    )
    p.add_argument("--ray-address", help="join this Ray cluster (auto, ray://host:port); default: start a local Ray")
    p.add_argument("--ray-chunk-size", type=int, default=4096, help="records per Ray task (default 4096)")
    p.add_argument("overrides", nargs="*", help="key=value overrides")
    a = p.parse_intermixed_args(argv)  # flags may follow the key=value overrides
    from chatforge.config import load_config
    from chatforge.data.readers import read_records
    from chatforge.io import check_not_inside

    cfg = load_config(a.config, a.overrides, CleanConfig)
    out = Path(a.output)
    check_not_inside(out, a.input, what="--output")
    if a.config:
        check_not_inside(out, [a.config], what="--output")
    check_output_dir(out, a.overwrite)
    t0 = time.perf_counter()
    records: list[Record] = []
    skipped: Counter = Counter()
    for path in a.input:
        res = read_records(path, format=cfg.format, on_error=cfg.on_error)
        print(f"{path}: {res.summary()}")
        records.extend(res.records)
        skipped.update(res.skipped)
    if not records:
        raise ChatforgeError(f"no records read from {', '.join(a.input)}")
    read_s = time.perf_counter() - t0
    kwargs: dict[str, Any] = {}
    if a.engine == "ray":
        from chatforge.data.cleaning.distributed import make_ray_record_pass

        kwargs["record_pass_fn"] = make_ray_record_pass(a.ray_address, a.ray_chunk_size)
    result = clean_records(records, cfg, **kwargs)
    result.report = {
        "inputs": a.input,
        "skipped_by_reader": dict(skipped),
        "read_seconds": round(read_s, 3),
        "seed": cfg.seed,
        "engine": a.engine,
        **result.report,
    }
    write_outputs(result, out, cfg, overwrite=a.overwrite)
    for step in result.report["steps"]:
        what = step.get("reasons") or step.get("masked") or step.get("rules") or {}
        n = step.get("removed", step.get("records_changed", 0))
        verb = "removed" if "removed" in step else "changed"
        print(f"  {step['step']:<12} {verb} {n:>7}  {json.dumps(what, ensure_ascii=False)[:150]}")
    counts = result.report["split"]["counts"]
    print(f"wrote {', '.join(f'{k}: {v}' for k, v in counts.items())} to {out} (report.json, removed.jsonl)")
    return 0
