"""Reward functions for `train.stage: grpo`: the built-ins and loading the user's own, named the way `--tools` names
tools (a `.py` file or an importable module).

A reward function is `fn(prompts, completions, **columns) -> list[float]`: `prompts[i]` is the text of the last user
message that `completions[i]` (the reply text, stop token removed) answers; `columns` holds every other field of the
prompt records (e.g. `answer`), one value per completion, plus `completion_ids` (token ids). Prompts are repeated
once per sampled completion. A function may return None for a completion it does not judge (counted as 0).

`grpo.rewards` entries: a built-in name (`number_match`, `exact_match`, `grounded_qa`, `format`,
`length_penalty`), or
`module.path:function`, or `path/to/file.py:function`.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from chatforge.errors import ChatforgeError

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def last_number(text: str) -> float | None:
    """The last number written in `text` (GSM8K style: `#### 1,234` -> 1234.0); None when there is none."""
    if text is None:
        return None
    text = str(text)
    if "####" in text:  # a GSM8K solution: the final answer follows the marker
        text = text.rsplit("####", 1)[1]
    found = _NUMBER.findall(text)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def number_match(prompts: list[str], completions: list[str], answer: Sequence = (), **_: object) -> list[float]:
    """1.0 when the completion's last number equals the `answer` column's (its last number), else 0.0."""
    if len(answer) != len(completions):
        raise ChatforgeError("number_match needs an `answer` column in the prompt records")
    out = []
    for text, want in zip(completions, answer):
        got, ref = last_number(text), last_number(want)
        out.append(float(got is not None and ref is not None and math.isclose(got, ref, rel_tol=0, abs_tol=1e-6)))
    return out


def _normalise(text: str) -> str:
    return " ".join(str(text).lower().split()).strip(" .!")


def exact_match(prompts: list[str], completions: list[str], answer: Sequence = (), **_: object) -> list[float]:
    """1.0 when the completion equals the `answer` column, ignoring case, spacing and a final full stop."""
    if len(answer) != len(completions):
        raise ChatforgeError("exact_match needs an `answer` column in the prompt records")
    return [float(_normalise(c) == _normalise(a)) for c, a in zip(completions, answer)]


def format_reward(prompts: list[str], completions: list[str], *, pattern: str, **_: object) -> list[float]:
    """1.0 when the completion matches the regex `pattern` (re.search), else 0.0."""
    rx = re.compile(pattern)
    return [float(rx.search(c) is not None) for c in completions]


def length_penalty(prompts: list[str], completions: list[str], *, limit: int, **_: object) -> list[float]:
    """0 up to `limit` characters, then -(extra characters / limit): long replies cost, linearly."""
    return [-max(0, len(c) - limit) / limit for c in completions]


def _norm_answer(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", str(text).lower()).split())


def grounded_qa(
    prompts: list[str],
    completions: list[str],
    answer: Sequence = (),
    answers: Sequence = (),
    answerable: Sequence = (),
    reference: Sequence = (),
    refusal_patterns: Sequence[str] = (),
    **_: object,
) -> list[float]:
    """Grounded QA (the demo's task): 1.0 for a refusal exactly when the question is unanswerable, and for a reply
    that contains the answer (case and punctuation ignored) when it is answerable; 0.0 otherwise, a false refusal
    included. Refusals: `evaluation.metrics.is_refusal` plus `grpo.refusal_patterns`. The answer comes from the `answers` (list) or `answer` column (None / [] or `answerable: false` =
    unanswerable), else from the `reference` reply (a refusal there = unanswerable)."""
    from chatforge.evaluation.metrics import is_refusal

    n = len(completions)

    def col(values: Sequence, i: int):
        return values[i] if len(values) == n else None

    if not any(len(c) == n for c in (answer, answers, answerable, reference)):
        raise ChatforgeError("grounded_qa needs an `answer`, `answers` or `reference` column in the prompt records")
    out = []
    for i, text in enumerate(completions):
        if col(answerable, i) is False:
            wants: list[str] = []
        elif isinstance(col(answers, i), list):
            wants = [str(a) for a in col(answers, i) if str(a).strip()]
        elif col(answer, i) is not None or len(answer) == n:
            wants = [str(col(answer, i))] if col(answer, i) not in (None, "") else []
        else:
            ref = col(reference, i) or ""
            wants = [] if is_refusal(ref, refusal_patterns) else [ref]
        refused = is_refusal(text, refusal_patterns)
        if not wants:
            out.append(float(refused))
        else:
            got = _norm_answer(text)
            out.append(float(not refused and any(_norm_answer(w) and _norm_answer(w) in got for w in wants)))
    return out


BUILTINS = ("number_match", "exact_match", "grounded_qa", "format", "length_penalty")


@dataclass
class Reward:
    name: str
    fn: Callable[..., list]
    weight: float = 1.0


def _import_file(path: Path, spec_text: str):
    if not path.is_file():
        raise ChatforgeError(f"grpo.rewards: {spec_text!r}: no such file {path}")
    spec = importlib.util.spec_from_file_location(f"chatforge_user_rewards_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # user code: say which file failed and how
        raise ChatforgeError(f"grpo.rewards: importing {path} failed: {type(err).__name__}: {err}") from err
    return module


def load_reward(spec_text: str, gcfg) -> Reward:
    """One `grpo.rewards` entry -> a Reward; raises ChatforgeError naming the entry when it cannot be loaded."""
    if spec_text == "number_match":
        return Reward("number_match", number_match)
    if spec_text == "exact_match":
        return Reward("exact_match", exact_match)
    if spec_text == "grounded_qa":
        return Reward("grounded_qa", partial(grounded_qa, refusal_patterns=list(gcfg.refusal_patterns)))
    if spec_text == "format":
        if not gcfg.format_pattern:
            raise ChatforgeError("grpo.rewards: the built-in `format` needs grpo.format_pattern (a regex)")
        try:
            re.compile(gcfg.format_pattern)
        except re.error as err:
            raise ChatforgeError(f"grpo.format_pattern: not a valid regex: {err}") from None
        return Reward("format", partial(format_reward, pattern=gcfg.format_pattern))
    if spec_text == "length_penalty":
        return Reward("length_penalty", partial(length_penalty, limit=gcfg.length_limit))
    source, sep, name = spec_text.rpartition(":")
    if not sep or not source or not name:
        raise ChatforgeError(
            f"grpo.rewards: {spec_text!r} is not a built-in ({', '.join(BUILTINS)}) nor `module.path:function` / "
            "`path/to/file.py:function`"
        )
    if source.endswith(".py") or "/" in source or Path(source).exists():
        module = _import_file(Path(source), spec_text)
    else:
        try:
            module = importlib.import_module(source)
        except Exception as err:
            raise ChatforgeError(
                f"grpo.rewards: {spec_text!r}: cannot import module {source!r} ({type(err).__name__}: {err})"
            ) from err
    fn = getattr(module, name, None)
    if fn is None:
        raise ChatforgeError(f"grpo.rewards: {spec_text!r}: {source} has no attribute {name!r}")
    if not callable(fn):
        raise ChatforgeError(f"grpo.rewards: {spec_text!r}: {name} is not callable")
    return Reward(name, fn)


def load_rewards(gcfg) -> list[Reward]:
    """All configured rewards with their weights; at least one is required."""
    if not gcfg.rewards:
        raise ChatforgeError(
            f"grpo.rewards: name at least one reward function (built-ins: {', '.join(BUILTINS)}; or "
            "module.path:function / path/to/file.py:function)"
        )
    weights = list(gcfg.reward_weights) or [1.0] * len(gcfg.rewards)
    if len(weights) != len(gcfg.rewards):
        raise ChatforgeError(f"grpo.reward_weights: {len(weights)} weights for {len(gcfg.rewards)} reward functions")
    out = []
    names: set[str] = set()
    for spec_text, w in zip(gcfg.rewards, weights):
        r = load_reward(spec_text, gcfg)
        r.weight = float(w)
        base, k = r.name, 2
        while r.name in names:  # two functions with one name still get distinct metrics
            r.name, k = f"{base}_{k}", k + 1
        names.add(r.name)
        out.append(r)
    return out


def score(rewards: list[Reward], prompts: list[str], completions: list[str], columns: dict) -> list[list[float]]:
    """Per reward function, one float per completion. A function that raises, returns something other than a list of
    len(completions) numbers, or a non-finite number stops training with an error naming it."""
    table = []
    for r in rewards:
        try:
            values = r.fn(prompts, completions, **columns)
        except ChatforgeError as err:
            raise ChatforgeError(f"reward function {r.name}: {err}") from err
        except Exception as err:  # user code: name the function and what went wrong
            raise ChatforgeError(f"reward function {r.name} raised {type(err).__name__}: {err}") from err
        try:
            values = list(values)
        except TypeError:
            raise ChatforgeError(
                f"reward function {r.name} returned {type(values).__name__}; it must return a list of floats"
            ) from None
        if len(values) != len(completions):
            raise ChatforgeError(
                f"reward function {r.name} returned {len(values)} values for {len(completions)} completions"
            )
        row = []
        for i, v in enumerate(values):
            if v is None:
                row.append(0.0)
                continue
            try:
                f = float(v)
            except (TypeError, ValueError):
                raise ChatforgeError(
                    f"reward function {r.name}: value {i} is {type(v).__name__} {v!r}, not a number"
                ) from None
            if not math.isfinite(f):
                raise ChatforgeError(f"reward function {r.name}: value {i} is {f}")
            row.append(f)
        table.append(row)
    return table
