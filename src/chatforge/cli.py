"""The `chatforge` command: a thin dispatcher to each pipeline package's own command module.

    chatforge data show|convert|clean ...   chatforge train CONFIG [k=v ...]   chatforge eval CONFIG [k=v ...]
    chatforge export ...                    chatforge chat --model ...         chatforge serve --model ...
    chatforge config from-llamafactory LF.yaml [-o OUT.yaml]                   chatforge verify DIR
    chatforge demo

Each sub-command lives in its package (`chatforge.<package>.commands`) and exposes `main(argv) -> int`.
User errors (`ChatforgeError`) print one clear message and exit 2, never a traceback; so does a bare `chatforge`
(usage on stderr, as for any other usage error). Third-party progress bars and deprecation warnings are silenced
(`chatforge.quiet`) unless `--verbose` is given (anywhere before a `--`) or CHATFORGE_VERBOSE=1.
"""

from __future__ import annotations

import importlib
import sys

from chatforge.errors import ChatforgeError

COMMANDS = {
    "data": ("chatforge.data.commands", "prepare, convert, clean and inspect datasets"),
    "tokenizer": ("chatforge.data.tokenizer_train", "train a byte-level BPE tokenizer for pretraining from scratch"),
    "train": ("chatforge.training.commands", "train a model (SFT, continued pretraining) from a YAML config"),
    "eval": ("chatforge.evaluation.commands", "evaluate a model and write a report; compare runs"),
    "export": ("chatforge.export.commands", "merge a LoRA adapter; write HF (int8/int4), GGUF, Ollama Modelfile"),
    "verify": ("chatforge.export.verify", "re-hash an exported folder against its SHA256SUMS"),
    "chat": ("chatforge.serving.chat_cli", "chat with a model in the terminal"),
    "serve": ("chatforge.serving.server", "serve an OpenAI-compatible HTTP API and a web chat page"),
    "ui": ("chatforge.ui.commands", "training web UI: configure, launch and watch runs, evaluate, chat, export"),
    "config": ("chatforge.config_llamafactory", "convert configs: from-llamafactory LF.yaml [-o OUT.yaml]"),
    "demo": ("chatforge.demo", "the main job: grounded QA on the embedded model, before/after a LoRA fine-tune"),
}

_VERBOSE_FLAGS = ("--verbose", "-v")


def _usage() -> str:
    lines = ["usage: chatforge [--verbose] COMMAND [ARGS...]", "       chatforge --version", "", "commands:"]
    lines += [f"  {name:<8} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += [
        "",
        "options:",
        "  --verbose, -v  show third-party progress bars, log lines and deprecation warnings",
        "  --version      print the versions of chatforge, torch, transformers and peft, and the device",
        "",
        "Run `chatforge COMMAND --help` for a command's options.",
    ]
    return "\n".join(lines)


def version_text() -> str:
    """chatforge's version, its main libraries' versions, and the device training would use."""
    from importlib import metadata

    from chatforge import __version__

    lines = [f"chatforge {__version__}"]
    for dist in ("torch", "transformers", "peft"):
        try:
            lines.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            lines.append(f"{dist} not installed")
    try:
        import torch

        if torch.cuda.is_available():
            names = sorted({torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())})
            device = f"cuda ({torch.cuda.device_count()} x {', '.join(names)}, CUDA {torch.version.cuda})"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            device = "mps"
        else:
            device = f"cpu ({torch.get_num_threads()} threads)"
    except ImportError:
        device = "unknown (torch not installed)"
    lines.append(f"device {device}")
    return "\n".join(lines)


def _split_verbose(argv: list[str]) -> tuple[list[str], bool]:
    """Remove the global --verbose flag: before the command, or anywhere before a `--` after it."""
    verbose = False
    out: list[str] = []
    for i, arg in enumerate(argv):
        if arg == "--":
            out += argv[i:]
            break
        # `-v` is only global before the command; after it a sub-command may use -v itself.
        if arg == "--verbose" or (arg == "-v" and not out):
            verbose = True
            continue
        out.append(arg)
    return out, verbose


def main(argv: list[str] | None = None) -> int:
    argv, verbose = _split_verbose(list(sys.argv[1:] if argv is None else argv))
    from chatforge.quiet import quiet_third_party

    quiet_third_party(verbose or None)
    if not argv:
        print(_usage(), file=sys.stderr)
        return 2
    if argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        print(version_text())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"chatforge: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(COMMANDS[name][0])
        return int(module.main(rest) or 0)
    except ChatforgeError as err:
        print(f"chatforge {name}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
