"""`chatforge eval`: evaluate a model (+ optional adapter) on a dataset and write a report.

    chatforge eval CONFIG.yaml [key=value ...]        run the tasks in eval.tasks on data.val
    chatforge eval compare RUN_DIR... [--output DIR]  put several runs side by side (table + bar charts)
    chatforge eval --help                             this text and every config key

Outputs in output.dir: report.json, report.md, chart_<task>.png, predictions_<task>.jsonl and the resolved config.yaml
(re-runnable as is). Keep CPU runs cheap with eval.max_samples and eval.max_new_tokens.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from chatforge.errors import ChatforgeError
from chatforge.evaluation.config import EvalRunConfig, load_eval_config
from chatforge.evaluation.report import compare, write_predictions, write_report
from chatforge.evaluation.tasks import TASKS, EvalContext, drop_long_prompts, sample


def _log(msg: str) -> None:
    print(f"[eval] {msg}", file=sys.stderr, flush=True)


def _read_data(cfg: EvalRunConfig) -> list[Any]:
    from chatforge.data.readers import read_records

    records: list[Any] = []
    for path in cfg.data.val:
        result = read_records(
            path,
            format=cfg.data.format,
            on_error=cfg.data.on_error,
            dataset_info=cfg.data.dataset_info,
            dataset_dir=cfg.data.dataset_dir,
        )
        kept = result.records[: cfg.data.max_samples] if cfg.data.max_samples else result.records
        note = f" (using the first {len(kept)}: data.max_samples)" if len(kept) < len(result.records) else ""
        _log(f"{path}: {result.summary()}{note}")
        records.extend(kept)
    return records


def _prepare_output(cfg: EvalRunConfig) -> Path:
    out = Path(cfg.output.dir)
    if out.exists() and any(out.iterdir()) and not cfg.output.overwrite:
        raise ChatforgeError(
            f"output folder {out} is not empty; choose another output.dir or set output.overwrite=true"
        )
    out.mkdir(parents=True, exist_ok=True)
    return out


def load_engine(cfg: EvalRunConfig) -> Any:
    """The generation engine for the configured model, adapter and template."""
    from chatforge.serving.engine import Engine

    return Engine.from_config(cfg.model, cfg.template)


def evaluate(cfg: EvalRunConfig, engine: Any = None) -> tuple[Path, dict[str, Any]]:
    """Run every task of `cfg.eval.tasks` on `cfg.data.val` and write the report; returns (output folder, report).

    `engine` may be passed in (tests, or a caller that already holds a loaded model); otherwise it is loaded.
    """
    from chatforge import __version__
    from chatforge.config import save_config
    from chatforge.evaluation.bench import benchmark_dir, chart_scales, check_allowed, run_benchmark
    from chatforge.evaluation.benchmarks import builtin_names, is_benchmark, load_spec
    from chatforge.evaluation.benchmarks.docs import find_subjects

    if not cfg.eval.tasks:
        raise ChatforgeError(f"eval.tasks is empty; choose from {', '.join([*TASKS, *builtin_names()])}")
    specs = {}
    for name in cfg.eval.tasks:
        if name in TASKS:
            continue
        if not is_benchmark(name):
            raise ChatforgeError(
                f"eval.tasks: unknown task {name!r}; tasks on data.val: {', '.join(TASKS)}; benchmarks: "
                f"{', '.join(builtin_names())}; or the path of a task YAML"
            )
        specs[name] = load_spec(name)
        check_allowed(specs[name], cfg.eval)
        find_subjects(specs[name], benchmark_dir(cfg.eval))  # a wrong data folder fails before the model loads
    from chatforge.evaluation.abstain import check_config

    check_config(cfg)  # grounded_qa_calibrated: its calibration inputs, before the model loads
    if not cfg.data.val and any(name in TASKS for name in cfg.eval.tasks):
        raise ChatforgeError("data.val lists no evaluation files; e.g. data.val=[path/to/test.jsonl]")
    out = _prepare_output(cfg)
    if cfg.eval.threads:
        import torch

        # On a shared CPU, extra OpenMP threads spin-wait for busy cores: 1 thread was ~10x faster than 2 here.
        torch.set_num_threads(cfg.eval.threads)
    save_config(cfg, out / "config.yaml")
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    needs_records = any(name in TASKS and name != "choice" for name in cfg.eval.tasks)
    records = _read_data(cfg) if needs_records else []
    if engine is None:
        _log(f"loading {cfg.model.name_or_path}" + (f" + adapter {cfg.model.adapter}" if cfg.model.adapter else ""))
        engine = load_engine(cfg)
    ctx = EvalContext(
        engine, cfg.eval, cfg.template.mask, cfg.data.max_length, cfg.template.default_system, out_dir=out
    )
    template_name = getattr(engine.template, "name", str(engine.template))
    label = out.resolve().name  # the run folder names a run best in comparisons (e.g. webqa_base, webqa_lora)
    report: dict[str, Any] = {
        "run": {
            "label": label,
            "model": cfg.model.name_or_path,
            "adapter": cfg.model.adapter,
            "template": template_name,
            "data": list(cfg.data.val) + ([str(benchmark_dir(cfg.eval) or "")] if specs else []),
            "started": started,
            "version": __version__,
        },
        "tasks": {},
    }
    for name in cfg.eval.tasks:
        if name in specs:
            spec = specs[name]
            start = time.perf_counter()
            result, n_items = run_benchmark(spec, ctx)
            result.seconds = time.perf_counter() - start
            write_predictions(out / f"predictions_{spec.name}.jsonl", result.predictions)
            report["tasks"][spec.name] = {
                "items": n_items,
                "seconds": result.seconds,
                "metrics": result.metrics,
                "details": result.details,
                "examples": result.examples,
                "chart_scales": chart_scales(spec),
                "predictions": f"predictions_{spec.name}.jsonl",
            }
            headline = {k: v for k, v in result.metrics.items() if "_ci_" not in k}
            _log(
                f"{spec.name} done in {result.seconds:.1f} s: " + ", ".join(f"{k}={v:.4g}" for k, v in headline.items())
            )
            continue
        task = TASKS[name]
        pool, too_long = None, 0
        if name == "choice":
            pool = [it for path in cfg.data.val for it in task.items(path)]
            items = sample(pool, cfg.eval.max_samples, cfg.eval.seed)
        else:
            if name in ("grounded_qa", "grounded_qa_calibrated"):
                items = task.items(records, cfg.eval.refusal_patterns)
            else:
                items = task.items(records)
            items, too_long = drop_long_prompts(items, engine, cfg.data.max_length)
            if too_long:
                _log(f"task {name}: left out {too_long} items whose prompt is over data.max_length tokens")
            items = sample(items, cfg.eval.max_samples, cfg.eval.seed)
        if not items:
            raise ChatforgeError(f"the {name} task found nothing to evaluate in {', '.join(cfg.data.val)}")
        _log(f"task {name}: {len(items)} items")
        start = time.perf_counter()
        result = task.run(items, ctx, pool) if name == "choice" else task.run(items, ctx)
        result.seconds = time.perf_counter() - start
        if too_long:
            result.details["left_out_prompt_over_max_length"] = too_long
        write_predictions(out / f"predictions_{name}.jsonl", result.predictions)
        report["tasks"][name] = {
            "items": len(items),
            "seconds": result.seconds,
            "metrics": result.metrics,
            "details": result.details,
            "examples": result.examples,
            "chart_scales": task.chart,
            "predictions": f"predictions_{name}.jsonl",
        }
        shown = ", ".join(f"{k}={v:.4g}" for k, v in result.metrics.items())
        _log(f"task {name} done in {result.seconds:.1f} s: {shown}")
    report["run"]["seconds"] = time.perf_counter() - t0
    written = write_report(out, report, charts=cfg.eval.charts)
    _log(f"wrote {written['md']}")
    return out, report


def _compare_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="chatforge eval compare", description="Put several eval runs side by side.")
    parser.add_argument("runs", nargs="+", help="folders written by `chatforge eval` (each has report.json)")
    parser.add_argument("--output", default="runs/compare", help="where compare.md and the charts go")
    args = parser.parse_args(argv)
    text, charts = compare(args.runs, args.output)
    print(text)
    print(f"wrote {Path(args.output) / 'compare.md'}" + "".join(f", {c}" for c in charts), file=sys.stderr)
    return 0


def main(argv: list[str]) -> int:
    argv = list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        from chatforge.config import format_config_help

        print(__doc__.strip() + "\n\nconfig keys:\n" + format_config_help(EvalRunConfig))
        return 0
    if argv[0] == "compare":
        return _compare_main(argv[1:])
    path = None if "=" in argv[0] else argv[0]
    overrides = argv[1:] if path is not None else argv
    cfg = load_eval_config(path, overrides)
    out, _ = evaluate(cfg)
    print(out / "report.md")
    return 0
