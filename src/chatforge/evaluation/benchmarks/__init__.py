"""Standard benchmarks as data: one YAML per task in this folder, read into a `BenchmarkSpec`.

`builtin_names()` lists the shipped tasks (mmlu, cmmlu, ceval, gsm8k, arc_easy, arc_challenge, boolq, commonsenseqa,
humaneval); `load_spec(name_or_path)` reads a shipped task by name or a user's own YAML by path. The YAML keys are
described in `spec.py` and in the README ("Evaluation" -> "Standard benchmarks"). Reading the data files and building
prompts is `docs.py`; scoring is `chatforge.evaluation.loglik`, `.codeexec` and `.bench`.
"""

from __future__ import annotations

from pathlib import Path

from chatforge.evaluation.benchmarks.spec import BenchmarkSpec, parse_spec

BUILTIN_DIR = Path(__file__).resolve().parent


def builtin_names() -> list[str]:
    """Names of the shipped benchmark tasks (the YAML file stems in this package)."""
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml"))


def is_benchmark(name: str) -> bool:
    """True for a shipped benchmark name or a path to a task YAML."""
    return name in builtin_names() or name.endswith((".yaml", ".yml"))


def load_spec(name_or_path: str) -> BenchmarkSpec:
    """A shipped benchmark by name, or a user's task YAML by path (its relative data paths resolve next to it)."""
    if name_or_path in builtin_names():
        return parse_spec(BUILTIN_DIR / f"{name_or_path}.yaml", builtin=True)
    return parse_spec(Path(name_or_path), builtin=False)


__all__ = ["BUILTIN_DIR", "BenchmarkSpec", "builtin_names", "is_benchmark", "load_spec", "parse_spec"]
