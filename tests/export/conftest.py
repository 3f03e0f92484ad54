"""Fixtures for the export tests: one tiny base + trained LoRA adapter per module."""

from __future__ import annotations

import pytest
from export_helpers import make_adapter, make_base


@pytest.fixture(scope="module")
def base_and_adapter(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    model, tok = make_base(root / "base")
    peft_model = make_adapter(model, tok, root / "adapter")
    return root / "base", root / "adapter", peft_model.eval(), tok
