"""Keep chatforge's output to chatforge's own lines: third-party progress bars, logger chatter and deprecation
warnings are silenced unless the user asks for them (`chatforge --verbose ...` or CHATFORGE_VERBOSE=1).

    from chatforge.quiet import quiet_third_party
    quiet_third_party()            # once, before loading models (the CLI does it for every command)

What goes: transformers' "Loading weights" / "Writing model shards" bars and its info/warning log lines (such as
"... is deprecated"), huggingface_hub download bars, FutureWarning and DeprecationWarning from any library. What stays:
errors, chatforge's own progress bars and messages, and every warning category that points at a real problem.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

_VERBOSE_ENV = "CHATFORGE_VERBOSE"


def is_verbose() -> bool:
    return os.environ.get(_VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def quiet_third_party(verbose: bool | None = None) -> bool:
    """Silence third-party noise unless `verbose` (default: the CHATFORGE_VERBOSE environment variable).

    Safe to call more than once and before or after transformers is imported. Returns whether output stays verbose.
    """
    if verbose is None:
        verbose = is_verbose()
    if verbose:
        os.environ[_VERBOSE_ENV] = "1"  # child processes (tokenization workers, servers) follow
        return True
    # Read by transformers / huggingface_hub when they are first imported.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the "process just got forked" notice
    # Deprecation notices are for the authors of the calling library, not for chatforge's users.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=PendingDeprecationWarning)
    for name in (
        "transformers",
        "peft",
        "accelerate",
        "huggingface_hub",
        "bitsandbytes",
        "torch._dynamo",
        "torch._inductor",
    ):
        logging.getLogger(name).setLevel(logging.ERROR)
    if "transformers" in sys.modules:
        _quiet_transformers()
    return False


def _quiet_transformers() -> None:
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - transformers is a dependency
        return
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def after_transformers_import() -> None:
    """Call after importing transformers when `quiet_third_party` ran before it (the env vars cover its logger, but
    its progress-bar switch is a module flag)."""
    if not is_verbose():
        _quiet_transformers()
