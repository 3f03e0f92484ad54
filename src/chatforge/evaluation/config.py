"""The `chatforge eval` run schema: the `eval` section, composed with the shared model/data/template/output sections.

Evaluation files are `data.val` (files or dataset_info names; `data.format`, `data.on_error`, `data.max_length` apply).
Every task in `eval.tasks` runs on those files:
  lm           loss / perplexity / token accuracy on the trained tokens (chat records, mask = `template.mask`) or on
               every token (raw-text records)
  generate     the last assistant turn is the reference; BLEU-4 and ROUGE-1/2/L of the generated reply
  toolcall     every assistant turn is a reference; slot P/R/F1 for tool-call turns, BLEU-4 for text turns
  grounded_qa  answer-or-refuse: EM / F1 / false refusals on answerable, refusal P/R/F1 on unanswerable questions,
               and the confusion matrix (answered correct / wrong / refused; refused / answered)
  grounded_qa_calibrated  the same, deciding answer-or-refuse by the model's refusal probability with a threshold
               fitted on eval.calibration_data to eval.target_false_refusal (evaluation/abstain.py)
  choice       JSONL of {question, choices, answer}: option log-likelihoods, accuracy with a 95% interval
Standard benchmarks run by name from their own files under eval.benchmark_dir (data.val is not used for them):
  mmlu cmmlu ceval arc_easy arc_challenge boolq commonsenseqa gsm8k humaneval, or the path of your own task YAML
  (see chatforge/evaluation/benchmarks/spec.py for its keys)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from chatforge.config import DataConfig, ModelConfig, OutputConfig, TemplateConfig, load_config

DATA_TASKS = ("lm", "generate", "toolcall", "grounded_qa", "grounded_qa_calibrated", "choice")


@dataclass
class EvalConfig:
    """What to evaluate and how much of it (small defaults keep a CPU run on the embedded model to minutes)."""

    tasks: list[str] = field(
        default_factory=lambda: ["generate"],
        metadata={
            "help": "tasks: lm, generate, toolcall, grounded_qa, choice, reward (on data.val); benchmarks mmlu, cmmlu, ceval, "
            "arc_easy, arc_challenge, boolq, commonsenseqa, gsm8k, humaneval; or a task YAML path"
        },
    )
    max_samples: int | None = field(
        default=100, metadata={"help": "items per task (a seeded sample); null = all", "min": 1}
    )
    max_new_tokens: int = field(default=128, metadata={"help": "generation length limit", "min": 1, "max": 8192})
    batch_size: int = field(default=16, metadata={"help": "sequences generated / scored together", "min": 1})
    seed: int = field(default=0, metadata={"help": "seed for the sample of items and few-shot examples"})
    zh_tokenize: Literal["char", "jieba"] = field(
        default="char", metadata={"help": "how Chinese text is split for BLEU/ROUGE: characters or jieba words"}
    )
    refusal_patterns: list[str] = field(
        default_factory=list, metadata={"help": "extra regular expressions that mark a reply as a refusal"}
    )
    # grounded_qa_calibrated (evaluation/abstain.py)
    calibration_data: list[str] = field(
        default_factory=list,
        metadata={"help": "grounded_qa_calibrated: grounded-QA files the threshold is fitted on (the val split)"},
    )
    target_false_refusal: float = field(
        default=0.1,
        metadata={
            "help": "grounded_qa_calibrated: highest share of answerable calibration items refused",
            "min": 0,
            "max": 1,
        },
    )
    calibration: str | None = field(
        default=None, metadata={"help": "grounded_qa_calibrated: reuse this calibration.json instead of fitting"}
    )
    calibration_max_samples: int | None = field(
        default=400, metadata={"help": "grounded_qa_calibrated: calibration items (a seeded sample)", "min": 1}
    )
    refusal_prefix_tokens: int = field(
        default=4,
        metadata={"help": "grounded_qa_calibrated: tokens of each refusal opening scored", "min": 1, "max": 64},
    )
    num_fewshot: int | None = field(
        default=None,
        metadata={"help": "solved examples before each question; null = the task's default (choice: 0)", "min": 0},
    )
    benchmark_dir: str | None = field(
        default=None,
        metadata={
            "help": "folder of the benchmark files (null = $CHATFORGE_BENCHMARKS), e.g. ../shared/data/benchmarks"
        },
    )
    subjects: list[str] = field(
        default_factory=list,
        metadata={"help": "benchmarks with subjects (mmlu, cmmlu, ceval): only these (empty = all)"},
    )
    max_per_subject: int | None = field(
        default=None, metadata={"help": "benchmarks: the first N items of each subject (null = all)", "min": 1}
    )
    sampling: Literal["random", "first"] = field(
        default="random", metadata={"help": "how eval.max_samples picks items: a seeded sample, or the first N"}
    )
    gen_max_new_tokens: int | None = field(
        default=None, metadata={"help": "benchmarks: generation limit (null = the task YAML's)", "min": 1}
    )
    allow_code_execution: bool = field(
        default=False, metadata={"help": "humaneval: run model-written code in a limited subprocess (opt in)"}
    )
    code_timeout: float = field(default=10.0, metadata={"help": "seconds per generated program", "min": 0.1})
    code_memory_mb: int = field(default=1024, metadata={"help": "address-space limit per program (MiB)", "min": 64})
    show_examples: int = field(default=5, metadata={"help": "examples of each error kind shown in report.md", "min": 0})
    charts: bool = field(default=True, metadata={"help": "write PNG charts beside the report"})
    threads: int | None = field(
        default=None,
        metadata={"help": "torch CPU threads (null = torch's default); 1 is fastest on a busy machine", "min": 1},
    )


@dataclass
class EvalRunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    template: TemplateConfig = field(default_factory=TemplateConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output: OutputConfig = field(default_factory=lambda: OutputConfig(dir="runs/eval"))


def load_eval_config(path: str | Path | None, overrides: list[str] | None = None) -> EvalRunConfig:
    """Read and validate an eval YAML (+ dotted overrides); every problem is reported in one ConfigError."""
    return load_config(path, list(overrides or []), EvalRunConfig)
