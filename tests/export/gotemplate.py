"""A small interpreter for the subset of Go's text/template that chatforge's Ollama TEMPLATE uses (tests only).

Semantics follow the text/template documentation: `{{-`/`-}}` trim adjacent whitespace in the template text; `if`,
`else if`, `else`, `range [$i, $v :=] X`, `end`; `$x := v` declares in the current block, `$x = v` assigns the nearest
declaration; `range` rebinds dot to the element, `$` is always the root; truthiness is Go's (false, 0, "", empty
list/map, nil are false); functions and, or, not, eq, ne, index, slice, len, printf "%q". Values print as Go prints
them, and Ollama's tool types print through their String methods, as compact JSON (`ToolFunction`, `Arguments`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any


def _go_json(value: Any) -> str:
    """encoding/json Marshal: compact; map keys sorted."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


class Arguments(dict):
    def __str__(self) -> str:
        return _go_json(dict(self))


@dataclass
class ToolFunction:
    """api.ToolFunction: fields marshal in struct order (name, description, parameters)."""

    Name: str
    Description: str = ""
    Parameters: dict = field(default_factory=dict)

    def __str__(self) -> str:
        obj: dict[str, Any] = {"name": self.Name}
        if self.Description:
            obj["description"] = self.Description
        obj["parameters"] = json.loads(_go_json(self.Parameters))
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


@dataclass
class Tool:
    Function: ToolFunction
    Type: str = "function"


@dataclass
class CallFunction:
    Name: str
    Arguments: Arguments


@dataclass
class ToolCall:
    Function: CallFunction


@dataclass
class Message:
    Role: str
    Content: str = ""
    ToolCalls: list = field(default_factory=list)


_TOKEN = re.compile(
    r'\s*("(?:[^"\\]|\\.)*"|\(|\)|:=|=|,|\$\.[A-Za-z_][\w.]*|\$?[A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)*|\$|\.[A-Za-z_][\w.]*|\.|-?\d+)'
)


def _tokenize(src: str) -> list[str]:
    out, pos = [], 0
    while pos < len(src):
        if src[pos:].strip() == "":
            break
        m = _TOKEN.match(src, pos)
        if not m:
            raise SyntaxError(f"cannot parse action near {src[pos : pos + 20]!r}")
        out.append(m.group(1))
        pos = m.end()
    return out


def _truthy(v: Any) -> bool:
    if v is None or v is False:
        return False
    if isinstance(v, (int, float, str, list, dict, tuple)):
        return bool(v)
    return True


def _print(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "<no value>"
    return str(v)


class Template:
    def __init__(self, text: str):
        self.nodes = self._parse(self._lex(text))

    # ---------------------------------------------------------------- lexing: text and actions, with trim markers
    @staticmethod
    def _lex(text: str) -> list[tuple[str, str]]:
        items: list[tuple[str, str]] = []
        pos = 0
        while True:
            start = text.find("{{", pos)
            if start < 0:
                items.append(("text", text[pos:]))
                break
            items.append(("text", text[pos:start]))
            end = text.find("}}", start)
            body = text[start + 2 : end]
            # a "}}" inside a string literal: extend to the real end
            while _unbalanced(body):
                end = text.find("}}", end + 2)
                body = text[start + 2 : end]
            if body.startswith("- "):
                items[-1] = ("text", items[-1][1].rstrip())
                body = body[2:]
            trim_right = body.endswith(" -")
            if trim_right:
                body = body[:-2]
            items.append(("action", body.strip()))
            pos = end + 2
            if trim_right:
                while pos < len(text) and text[pos] in " \t\r\n":
                    pos += 1
        return [i for i in items if not (i[0] == "text" and i[1] == "")]

    # ---------------------------------------------------------------- parsing into a tree of blocks
    def _parse(self, items):
        root: list = []
        stack = [root]
        blocks: list[dict] = []
        for kind, body in items:
            if kind == "text":
                stack[-1].append(("text", body))
                continue
            words = body.split(None, 1)
            head = words[0] if words else ""
            rest = words[1] if len(words) > 1 else ""
            if head == "if":
                node = {"type": "if", "branches": [(_tokenize(rest), [])], "else": None}
                stack[-1].append(("if", node))
                blocks.append(node)
                stack.append(node["branches"][0][1])
            elif head == "else" and rest.startswith("if "):
                stack.pop()
                node = blocks[-1]
                node["branches"].append((_tokenize(rest[3:]), []))
                stack.append(node["branches"][-1][1])
            elif head == "else":
                stack.pop()
                node = blocks[-1]
                node["else"] = []
                stack.append(node["else"])
            elif head == "range":
                toks = _tokenize(rest)
                names: list[str] = []
                if ":=" in toks:
                    at = toks.index(":=")
                    names = [t for t in toks[:at] if t != ","]
                    toks = toks[at + 1 :]
                node = {"type": "range", "names": names, "expr": toks, "body": []}
                stack[-1].append(("range", node))
                blocks.append(node)
                stack.append(node["body"])
            elif head == "end":
                stack.pop()
                blocks.pop()
            else:
                stack[-1].append(("expr", _tokenize(body)))
        if len(stack) != 1:
            raise SyntaxError("unclosed block")
        return root

    # ---------------------------------------------------------------- execution
    def execute(self, data: Any) -> str:
        out: list[str] = []
        self._run(self.nodes, data, [{"$": data}], out)
        return "".join(out)

    def _run(self, nodes, dot, scopes, out):
        for kind, node in nodes:
            if kind == "text":
                out.append(node)
            elif kind == "expr":
                toks = node
                if len(toks) >= 2 and toks[1] in (":=", "="):
                    value = self._eval(toks[2:], dot, scopes)
                    if toks[1] == ":=":
                        scopes[-1][toks[0]] = value
                    else:
                        for scope in reversed(scopes):
                            if toks[0] in scope:
                                scope[toks[0]] = value
                                break
                        else:
                            raise NameError(f"undefined variable {toks[0]}")
                else:
                    out.append(_print(self._eval(toks, dot, scopes)))
            elif kind == "if":
                for cond, body in node["branches"]:
                    if _truthy(self._eval(cond, dot, scopes)):
                        self._run(body, dot, scopes + [{}], out)
                        break
                else:
                    if node["else"] is not None:
                        self._run(node["else"], dot, scopes + [{}], out)
            elif kind == "range":
                seq = self._eval(node["expr"], dot, scopes) or []
                for index, item in enumerate(seq):
                    scope: dict[str, Any] = {}
                    if len(node["names"]) == 1:
                        scope[node["names"][0]] = item
                    elif len(node["names"]) == 2:
                        scope[node["names"][0]], scope[node["names"][1]] = index, item
                    self._run(node["body"], item, scopes + [scope], out)

    def _eval(self, toks: list[str], dot, scopes):
        value, rest = self._command(toks, dot, scopes)
        if rest:
            raise SyntaxError(f"unexpected {rest}")
        return value

    def _command(self, toks, dot, scopes):
        """A function call (name args...) or a single operand; stops at ')'."""
        funcs = {"and", "or", "not", "eq", "ne", "index", "slice", "len", "printf"}
        if toks and toks[0] in funcs:
            name, args, rest = toks[0], [], toks[1:]
            while rest and rest[0] != ")":
                arg, rest = self._operand(rest, dot, scopes)
                args.append(arg)
            return self._call(name, args), rest
        return self._operand(toks, dot, scopes)

    def _operand(self, toks, dot, scopes):
        tok, rest = toks[0], toks[1:]
        if tok == "(":
            value, rest = self._command(rest, dot, scopes)
            assert rest[0] == ")"
            rest = rest[1:]
            while rest and rest[0].startswith("."):
                value = self._fields(value, rest[0][1:])
                rest = rest[1:]
            return value, rest
        if tok.startswith('"'):
            return json.loads(tok), rest
        if re.fullmatch(r"-?\d+", tok):
            return int(tok), rest
        if tok in ("true", "false"):
            return tok == "true", rest
        if tok == ".":
            return dot, rest
        if tok.startswith("."):
            return self._fields(dot, tok[1:]), rest
        if tok.startswith("$"):
            var, _, path = tok.partition(".")
            for scope in reversed(scopes):
                if var in scope:
                    return (self._fields(scope[var], path) if path else scope[var]), rest
            raise NameError(f"undefined variable {var}")
        raise SyntaxError(f"unknown operand {tok!r}")

    @staticmethod
    def _fields(value, path: str):
        for name in path.split("."):
            value = value[name] if isinstance(value, dict) else getattr(value, name)
        return value

    @staticmethod
    def _call(name, args):
        if name == "and":
            for a in args:
                if not _truthy(a):
                    return a
            return args[-1]
        if name == "or":
            for a in args:
                if _truthy(a):
                    return a
            return args[-1]
        if name == "not":
            return not _truthy(args[0])
        if name == "eq":
            return any(args[0] == b for b in args[1:])
        if name == "ne":
            return args[0] != args[1]
        if name == "index":
            return args[0][args[1]]
        if name == "slice":
            return args[0][args[1] : args[2] if len(args) > 2 else None]
        if name == "len":
            return len(args[0])
        if name == "printf":
            assert args[0] == "%q", "only %q is used"
            return json.dumps(args[1], ensure_ascii=False)
        raise NameError(name)


def _unbalanced(body: str) -> bool:
    """True when `body` ends inside a string literal (odd number of unescaped quotes)."""
    count, i = 0, 0
    while i < len(body):
        if body[i] == "\\":
            i += 2
            continue
        if body[i] == '"':
            count += 1
        i += 1
    return count % 2 == 1
