"""`chatforge train CONFIG [key=value ...]`: run a training job from a YAML config plus dotted overrides.

chatforge train examples/train_alpaca_lora.yaml train.max_steps=100 output.dir=runs/try
chatforge train examples/train_alpaca_lora.yaml train.resume=auto     # continue after an interruption
chatforge train examples/train_alpaca_lora.yaml --nproc 2 train.distributed=fsdp2   # 2 processes via torchrun
chatforge train --help                                                # every option with its default
"""

from __future__ import annotations

import os
import subprocess
import sys

from chatforge.errors import ChatforgeError

USAGE = __doc__.split("\n\n", 1)[1]


def _take_nproc(argv: list[str]) -> tuple[int | None, list[str]]:
    """`--nproc N` (or `--nproc=N`) anywhere in argv, and argv without it."""
    rest, nproc, i = [], None, 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--nproc" or arg.startswith("--nproc="):
            value = arg.split("=", 1)[1] if "=" in arg else (argv[i + 1] if i + 1 < len(argv) else "")
            i += 1 if "=" in arg else 2
            if not value.isdigit() or int(value) < 1:
                raise ChatforgeError(f"--nproc {value!r}: give the number of processes, e.g. --nproc 2")
            nproc = int(value)
            continue
        rest.append(arg)
        i += 1
    return nproc, rest


def launch(nproc: int, argv: list[str]) -> int:
    """Run this same command under torchrun on one node (`--standalone`), one process per device."""
    if "LOCAL_RANK" in os.environ:
        raise ChatforgeError("--nproc inside a torchrun process: launch either with torchrun or with --nproc")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd += ["-m", "chatforge", "train", *argv]
    print("chatforge train: " + " ".join(cmd[1:]), file=sys.stderr, flush=True)
    return subprocess.call(cmd)


def main(argv: list[str]) -> int:
    from chatforge.config import format_config_help
    from chatforge.training.config import TrainRunConfig, load_train_config

    if not argv or argv[0] in ("-h", "--help"):
        print("usage: chatforge train CONFIG.yaml [--nproc N] [key=value ...]\n" + USAGE)
        print("options (YAML keys; override any with key=value):")
        print(format_config_help(TrainRunConfig))
        return 0 if argv else 2
    nproc, argv = _take_nproc(argv)
    if nproc is not None:
        return launch(nproc, argv)
    path, overrides = argv[0], argv[1:]
    if "=" in path:  # no config file, only overrides (everything else at its default)
        path, overrides = None, argv
    from chatforge.config_llamafactory import maybe_convert

    path, unmapped = maybe_convert(path)  # an LLaMA-Factory YAML trains as its chatforge equivalent
    if unmapped:
        print(f"LLaMA-Factory config -> {path}; not carried over:", file=sys.stderr)
        for key, reason in unmapped:
            print(f"  {key}: {reason}", file=sys.stderr)
    cfg = load_train_config(path, overrides)
    from chatforge.training.recipes import train

    result = train(cfg)
    print(f"output: {result.output_dir}", file=sys.stderr)
    return 0
