"""The run_cli fixture: the real CLI in-process, its exit code and stderr."""

from __future__ import annotations

import pytest

from chatforge.cli import main as cli_main


@pytest.fixture
def run_cli(capsys):
    """cli.main(argv) in-process -> (exit code, stderr). An uncaught exception fails the test with its traceback."""

    def run(*argv: str) -> tuple[int, str]:
        capsys.readouterr()
        rc = cli_main([str(a) for a in argv])
        return rc, capsys.readouterr().err

    return run
