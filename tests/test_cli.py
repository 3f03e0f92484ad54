"""Top-level CLI behaviour: bare `chatforge` is a usage error, --version names the libraries and the device, the help
lists every command, --verbose is accepted anywhere, and the quiet mode silences third-party noise."""

from __future__ import annotations

import warnings

from chatforge.cli import COMMANDS, _split_verbose, main


def test_bare_command_prints_usage_and_exits_2(capsys):
    assert main([]) == 2
    captured = capsys.readouterr()
    assert "usage: chatforge" in captured.err and captured.out == ""
    for name in COMMANDS:
        assert name in captured.err


def test_help_exits_0_and_export_help_matches_what_works(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "GGUF" in out and "verify" in out  # export writes GGUF / int8 / int4 and verify re-hashes
    assert "config" in out and "from-llamafactory" in out


def test_version_names_libraries_and_device(capsys):
    from importlib import metadata

    assert main(["--version"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("chatforge ")
    for dist in ("torch", "transformers", "peft"):
        assert f"{dist} {metadata.version(dist)}" in out
    assert out[-1].startswith("device ")


def test_unknown_command_exits_2(capsys):
    assert main(["trian"]) == 2
    assert "unknown command 'trian'" in capsys.readouterr().err


def test_verbose_flag_is_removed_before_dispatch():
    assert _split_verbose(["--verbose", "chat", "--model", "m"]) == (["chat", "--model", "m"], True)
    assert _split_verbose(["chat", "--model", "m", "--verbose"]) == (["chat", "--model", "m"], True)
    assert _split_verbose(["-v", "train", "x.yaml"]) == (["train", "x.yaml"], True)
    assert _split_verbose(["data", "show", "-v"]) == (["data", "show", "-v"], False)
    assert _split_verbose(["chat", "--", "--verbose"]) == (["chat", "--", "--verbose"], False)


def test_quiet_mode_hides_loading_bars_and_deprecations(tmp_path, capsys, monkeypatch):
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from chatforge.models.tiny import tiny_llama, tiny_tokenizer
    from chatforge.quiet import quiet_third_party

    tiny_llama(len(tiny_tokenizer())).save_pretrained(tmp_path / "m")
    for key in (
        "TRANSFORMERS_VERBOSITY",
        "HF_HUB_DISABLE_PROGRESS_BARS",
        "CHATFORGE_VERBOSE",
        "TOKENIZERS_PARALLELISM",
        "TRANSFORMERS_NO_ADVISORY_WARNINGS",
    ):
        monkeypatch.setenv(key, "")  # restored after the test
        monkeypatch.delenv(key)
    bars, level = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    try:
        hf_logging.enable_progress_bar()
        capsys.readouterr()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            quiet_third_party(False)
            AutoModelForCausalLM.from_pretrained(tmp_path / "m")
            warnings.warn("old argument", FutureWarning, stacklevel=1)
            warnings.warn("real problem", UserWarning, stacklevel=1)
        assert "Loading weights" not in capsys.readouterr().err
        assert [str(w.message) for w in caught] == ["real problem"]
        hf_logging.enable_progress_bar()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert quiet_third_party(True) is True
            AutoModelForCausalLM.from_pretrained(tmp_path / "m")
            warnings.warn("old argument", FutureWarning, stacklevel=1)
        assert "Loading weights" in capsys.readouterr().err and len(caught) == 1
    finally:
        (hf_logging.enable_progress_bar if bars else hf_logging.disable_progress_bar)()
        hf_logging.set_verbosity(level)
