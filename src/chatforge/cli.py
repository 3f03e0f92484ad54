"""The `chatforge` command: a thin dispatcher to each pipeline package's own command module.

    chatforge data show|convert|clean ...   chatforge train CONFIG [k=v ...]   chatforge eval CONFIG [k=v ...]
    chatforge export ...                    chatforge chat --model ...         chatforge serve --model ...
    chatforge verify DIR
    chatforge demo

Each sub-command lives in its package (`chatforge.<package>.commands`) and exposes `main(argv) -> int`.
User errors (`ChatforgeError`) print one clear message and exit 2, never a traceback.
"""

from __future__ import annotations

import importlib
import sys

from chatforge.errors import ChatforgeError

COMMANDS = {
    "data": ("chatforge.data.commands", "prepare, convert, clean and inspect datasets"),
    "train": ("chatforge.training.commands", "train a model (SFT, continued pretraining) from a YAML config"),
    "eval": ("chatforge.evaluation.commands", "evaluate a model and write a report"),
    "export": ("chatforge.export.commands", "merge a LoRA adapter; write HF (int8/int4), GGUF, Ollama Modelfile"),
    "verify": ("chatforge.export.verify", "re-hash an exported folder against its SHA256SUMS"),
    "chat": ("chatforge.serving.chat_cli", "chat with a model in the terminal"),
    "serve": ("chatforge.serving.server", "serve an OpenAI-compatible HTTP API and a web chat page"),
    "demo": ("chatforge.demo", "the main job: grounded QA on the embedded model, before/after a LoRA fine-tune"),
}


def _usage() -> str:
    lines = ["usage: chatforge COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<8} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `chatforge COMMAND --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        from chatforge import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"chatforge: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    try:
        return int(module.main(rest) or 0)
    except ChatforgeError as err:
        print(f"chatforge {name}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
