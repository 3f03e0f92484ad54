"""Python functions a chat model may call: load them from a file or module, describe them, run the model's calls.

`chatforge chat --tools FILE.py` and `chatforge serve --tools FILE.py` use this. Which functions are tools:
a module-level `TOOLS` list of OpenAI function specs (each name must be a function in the module), else the names in
`__all__`, else every public function defined in the file itself. Specs of plain functions come from their type hints
and Google-style docstrings via `transformers.utils.get_json_schema` (the same code HF chat templates use).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chatforge.data.schema import ToolCall
from chatforge.errors import ChatforgeError


@dataclass
class Toolbox:
    """Callable tools by name plus their OpenAI function specs ({"name", "description", "parameters"})."""

    functions: dict[str, Callable[..., Any]]
    specs: list[dict]

    def call(self, call: ToolCall) -> str:
        """Run one tool call and return its result as text for the `tool` message. Failures become the result text,
        so the model (and the user) sees what went wrong instead of the chat crashing."""
        fn = self.functions.get(call.name)
        if fn is None:
            return f"error: unknown tool {call.name!r}; available: {', '.join(self.functions) or 'none'}"
        try:
            result = fn(**call.arguments)
        except Exception as err:  # the tool is user code: report any failure back into the conversation
            return f"error: {call.name} failed: {type(err).__name__}: {err}"
        return result if isinstance(result, str) else json.dumps(result, ensure_ascii=False, default=str)


def _import(source: str):
    path = Path(source)
    if source.endswith(".py") or path.exists():
        if not path.is_file():
            raise ChatforgeError(f"--tools: no such file {source}")
        spec = importlib.util.spec_from_file_location(f"chatforge_user_tools_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as err:
            raise ChatforgeError(f"--tools: importing {source} failed: {type(err).__name__}: {err}") from err
        return module
    try:
        return importlib.import_module(source)
    except ImportError as err:
        raise ChatforgeError(f"--tools: {source!r} is neither a .py file nor an importable module ({err})") from err


def function_spec(fn: Callable[..., Any]) -> dict:
    """The OpenAI function spec of a documented, type-hinted Python function."""
    from transformers.utils import get_json_schema

    try:
        spec = get_json_schema(fn)["function"]
    except Exception as err:  # DocstringParsingException / TypeHintParsingException: say which function and why
        raise ChatforgeError(
            f"--tools: cannot describe {fn.__name__}(): {err}. Give every argument a type hint and an 'Args:' line "
            "in the docstring, or define a TOOLS list of OpenAI function specs in the file."
        ) from err
    spec.pop("return", None)
    return spec


def load_tools(source: str) -> Toolbox:
    """Load tools from a `.py` file path or an importable module name."""
    module = _import(source)
    if hasattr(module, "TOOLS"):
        specs = [t.get("function", t) for t in module.TOOLS]
        functions = {}
        for i, spec in enumerate(specs):
            name = spec.get("name") if isinstance(spec, dict) else None
            if not callable(getattr(module, name or "", None)):
                raise ChatforgeError(f"--tools: {source}: TOOLS[{i}] names {name!r}, which is not a function there")
            functions[name] = getattr(module, name)
        return Toolbox(functions, specs)
    if hasattr(module, "__all__"):
        names = [n for n in module.__all__ if inspect.isfunction(getattr(module, n, None))]
    else:
        names = [
            n
            for n, obj in vars(module).items()
            if inspect.isfunction(obj) and not n.startswith("_") and obj.__module__ == module.__name__
        ]
    if not names:
        raise ChatforgeError(f"--tools: {source} defines no public functions (and no TOOLS list)")
    functions = {n: getattr(module, n) for n in names}
    return Toolbox(functions, [function_spec(f) for f in functions.values()])
