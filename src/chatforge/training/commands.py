"""`chatforge train CONFIG [key=value ...]`: run a training job from a YAML config plus dotted overrides.

chatforge train examples/train_alpaca_lora.yaml train.max_steps=100 output.dir=runs/try
chatforge train examples/train_alpaca_lora.yaml train.resume=auto     # continue after an interruption
chatforge train --help                                                # every option with its default
"""

from __future__ import annotations

import sys

USAGE = __doc__.split("\n\n", 1)[1]


def main(argv: list[str]) -> int:
    from chatforge.config import format_config_help
    from chatforge.training.config import TrainRunConfig, load_train_config

    if not argv or argv[0] in ("-h", "--help"):
        print("usage: chatforge train CONFIG.yaml [key=value ...]\n" + USAGE)
        print("options (YAML keys; override any with key=value):")
        print(format_config_help(TrainRunConfig))
        return 0 if argv else 2
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
