"""`chatforge ui` in headless Chromium: configure a run on a tiny model from the generated form (a bad value shows its
error next to the field), watch it finish with its curves, chat with it, export and verify the merge; a run killed from
outside shows as failed, also after the UI restarts. Runs are real `chatforge train` / `export` subprocesses."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time

import pytest

pytest.importorskip("fastapi", reason="the serving extras (fastapi) are not installed")
from ui_helpers import make_workspace, serve_in_thread

from chatforge.ui.app import create_app
from chatforge.ui.workspace import KINDS, Workspace

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser():
    if not shutil.which("chromium"):
        pytest.skip("Debian chromium is not installed (apt-get install chromium; `make test` does it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


FAST = {
    "model.name_or_path": "models/tiny-model",
    "template.name": "chatml",
    "data.max_length": "64",
    "data.val_size": "0.25",
    "train.max_steps": "8",
    "train.eval_every": "4",
    "train.batch_size": "4",
    "train.learning_rate": "0.001",
    "train.num_threads": "1",
    "train.tensorboard": False,
    "peft.r": "4",
    "peft.alpha": "8",
}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = make_workspace(tmp_path_factory.mktemp("ui") / "ws")
    yield root
    # A failed test must not leave a 100000-step run behind: stop whatever still runs.
    ws = Workspace(root)
    for kind in KINDS:
        for _, folder, _ in ws.jobs(kind):
            ws.stop(kind, folder)


@pytest.fixture
def page(browser, workspace, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the runs are children of this process: one thread each
    with serve_in_thread(create_app(workspace)) as base:
        pg = browser.new_page()
        pg.set_default_timeout(60_000)
        pg.goto(base + "/")
        pg.wait_for_selector("body[data-ready='1']")
        yield pg
        pg.close()


def fill_form(page, values: dict) -> None:
    for path, value in values.items():
        box = page.locator(f"#train-form [data-path='{path}']")
        if isinstance(value, bool):
            box.set_checked(value)
        elif box.evaluate("e => e.tagName") == "SELECT":
            box.select_option(value)
        else:
            box.fill(value)


def wait_status(page, selector: str, status: str) -> None:
    page.wait_for_function(f"document.querySelector({selector!r}).textContent === {status!r}")


def wait_job(page, title: str, status: str = "finished") -> None:
    """The job panel shows `title` (so its status is this job's, not the previous one's) with `status`."""
    page.wait_for_function(f"document.querySelector('#job-title').textContent === {title!r}")
    wait_status(page, "#job-status", status)


def test_train_watch_chat_export(page, workspace):
    page.fill("#run-name", "r1")
    fill_form(page, FAST)
    # Dataset picker: the file goes into data.train, the preview highlights the trained (assistant) tokens.
    page.select_option("#data-file", "data/chat.jsonl")
    page.click("#use-train")
    assert page.input_value("#train-form [data-path='data.train']") == "[data/chat.jsonl]"
    page.click("#preview-btn")
    page.wait_for_selector("#preview .record .trained")
    assert "reverse:" in page.locator("#preview .record .untrained").first.inner_text()
    assert "<|im_end|>" in page.locator("#preview .record .trained").first.inner_text()

    # Bad values: each problem is shown next to its own field, nothing is launched.
    fill_form(page, {"train.learning_rate": "fast", "train.scheduler": "cosine"})
    page.fill("#train-form [data-path='peft.dropout']", "2")
    page.click("#launch-btn")
    lr_error = page.locator(".field-error[data-for='train.learning_rate']")
    lr_error.wait_for()
    page.wait_for_function("document.querySelector(\".field-error[data-for='train.learning_rate']\").textContent")
    assert "expected a number" in lr_error.inner_text()
    assert "out of range" in page.locator(".field-error[data-for='peft.dropout']").inner_text()
    assert page.locator(".field-error[data-for='train.batch_size']").inner_text() == ""
    assert not (workspace / "runs" / "r1").exists()
    # A data file outside the workspace is refused at its field.
    fill_form(page, {"train.learning_rate": "0.001", "data.train": "[../outside.jsonl]"})
    page.fill("#train-form [data-path='peft.dropout']", "0.05")
    page.click("#check-btn")
    page.wait_for_function("document.querySelector(\".field-error[data-for='data.train']\").textContent")
    assert "outside the workspace" in page.locator(".field-error[data-for='data.train']").inner_text()
    assert page.locator(".field-error[data-for='train.learning_rate']").inner_text() == ""

    # Launch and watch it finish; the curves come from metrics.jsonl.
    page.click("#use-train")
    page.click("#launch-btn")
    page.wait_for_selector("#run:not(.hidden)")
    wait_status(page, "#run-status", "finished")
    page.wait_for_function("document.querySelector('#chart-loss polyline[data-series=train]')")
    train_line = page.get_attribute("#chart-loss polyline[data-series=train]", "points")
    assert len(train_line.split()) == 8  # one point per step
    assert page.locator("#chart-loss circle").count() == 2  # validation at steps 4 and 8
    assert page.locator("#chart-lr polyline").count() == 1 and page.locator("#chart-tps polyline").count() == 1
    assert page.locator(".run-item[data-name='r1'] .badge").inner_text() == "finished"
    summary = json.loads((workspace / "runs" / "r1" / "summary.json").read_text())
    assert summary["steps"] == 8

    # Chat: the page's reply is the run's own greedy answer (base model + the trained adapter).
    from chatforge.data.schema import Conversation, Message
    from chatforge.serving.engine import Engine, SamplingParams

    page.fill("#chat-max", "12")
    page.fill("#chat-input", "reverse: fox dog")
    page.press("#chat-input", "Enter")
    page.wait_for_selector(".chat-msg.assistant")
    engine = Engine.load(
        str(workspace / "models" / "tiny-model"), adapter=str(workspace / "runs" / "r1"), template="chatml"
    )
    conv = Conversation([Message(role="user", content="reverse: fox dog")])
    expected = engine.generate([conv], SamplingParams(max_new_tokens=12))[0]
    assert page.locator(".chat-msg.assistant").first.inner_text() == (expected.message.content or expected.text).strip()

    # Export merges the adapter; verify checks the checksums and that the merged model answers like the run.
    page.fill("#export-name", "r1-merged")
    page.click("#export-btn")
    wait_job(page, "export r1-merged")
    assert (workspace / "exports" / "r1-merged" / "model" / "model.safetensors").is_file()
    page.click("#verify-btn")
    page.wait_for_function("document.querySelector('#verify-result').textContent.startsWith('OK')")
    result = page.inner_text("#verify-result")
    assert "checksums match" in result and "same reply" in result


def test_run_killed_from_outside_shows_failed(page, workspace):
    """Two long runs: one is killed by another process (failed, with how it ended), one is stopped from the page."""
    long_run = {**FAST, "train.max_steps": "100000", "train.eval_every": "0", "data.train": "[data/chat.jsonl]"}
    # A third run crashes on a bad record: its error (from stderr.log) names the file and line.
    lines = (workspace / "data" / "chat.jsonl").read_text().splitlines()
    lines[1] = '{"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "x"}]}'
    (workspace / "data" / "bad.jsonl").write_text("\n".join(lines) + "\n")
    crash = {**FAST, "data.train": "[data/bad.jsonl]", "data.val_size": "0.0"}
    for name, values in (("long", long_run), ("stopme", long_run), ("crash", crash)):
        page.click("#new-run-btn")
        page.fill("#run-name", name)
        fill_form(page, values)
        page.click("#launch-btn")
        page.wait_for_function(f"document.querySelector('#run-title').textContent === {name!r}")
    page.wait_for_function("document.querySelector('#run-error').textContent.includes('bad.jsonl, line 2')")
    assert "chatforge train: error:" in page.inner_text("#run-error")
    assert page.inner_text("#run-status") == "failed"
    for name in ("long", "stopme"):
        page.click(f".run-item[data-name='{name}']")
        page.wait_for_function(f"document.querySelector('#run-title').textContent === {name!r}")
        page.wait_for_function("document.querySelector('#chart-loss polyline[data-series=train]')")  # training
        wait_status(page, "#run-status", "running")
    meta = json.loads((workspace / "runs" / "long" / "ui-job.json").read_text())
    os.kill(meta["pid"], signal.SIGKILL)
    page.click("#stop-btn")  # the page shows "stopme"
    wait_status(page, "#run-status", "stopped")
    page.click(".run-item[data-name='long']")
    wait_status(page, "#run-status", "failed")
    page.wait_for_function("document.querySelector('#run-error').textContent.includes('killed by signal 9')")
    assert page.locator(".run-item[data-name='long'] .badge").inner_text() == "failed"
    assert page.locator(".run-item[data-name='stopme'] .badge").inner_text() == "stopped"


def test_status_survives_a_ui_restart(browser, workspace, tmp_path):
    """A fresh app on the same workspace reads every status back from the run folders, including a run whose process
    died while no UI was watching (no summary.json, pid gone)."""
    if not all((workspace / "runs" / name / "ui-job.json").is_file() for name in ("r1", "long", "stopme")):
        pytest.skip("needs the runs launched by the two tests above")
    orphan = workspace / "runs" / "orphan"
    orphan.mkdir()
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (orphan / "ui-job.json").write_text(json.dumps(dict(kind="runs", name="orphan", pid=dead.pid, started=time.time())))
    (orphan / "stderr.log").write_text("step 3/10 loss 2.1\n")
    with serve_in_thread(create_app(workspace)) as base:
        page = browser.new_page()
        page.goto(base + "/")
        page.wait_for_selector(".run-item[data-name='orphan']")
        badges = {
            name: page.locator(f".run-item[data-name='{name}'] .badge").inner_text()
            for name in ("r1", "long", "stopme", "orphan")
        }
        assert badges == {"r1": "finished", "long": "failed", "stopme": "stopped", "orphan": "failed"}
        page.click(".run-item[data-name='orphan']")
        page.wait_for_function("document.querySelector('#run-error').textContent.includes('gone without finishing')")
        assert "step 3/10" in page.inner_text("#run-error")
        page.close()


def test_evaluate_and_compare(page, workspace):
    """The finished run's evaluation form is prefilled from the run; evaluate it and the base model, compare them."""
    if not (workspace / "runs" / "r1" / "summary.json").is_file():
        pytest.skip("needs the run trained by test_train_watch_chat_export")
    page.click(".run-item[data-name='r1']")
    page.wait_for_selector("#eval-form [data-path='eval.tasks']")
    assert page.input_value("#eval-form [data-path='model.adapter']") == "runs/r1"
    page.select_option("#eval-file", "data/chat.jsonl")
    page.click("#eval-use-file")
    assert page.input_value("#eval-form [data-path='data.val']") == "[data/chat.jsonl]"
    quick = {"data.val": "[data/chat.jsonl]", "eval.tasks": "[lm]", "eval.max_samples": "8", "eval.threads": "1"}
    for name, adapter in (("tuned", "runs/r1"), ("base", "")):
        page.click(".run-item[data-name='r1']")
        page.wait_for_selector("#eval-form [data-path='eval.tasks']")
        page.fill("#eval-name", name)
        for path, value in {**quick, "model.adapter": adapter, "eval.max_new_tokens": "0"}.items():
            page.fill(f"#eval-form [data-path='{path}']", value)
        page.click("#eval-btn")  # max_new_tokens 0 is out of range: shown at the field
        page.wait_for_function(
            "document.querySelector(\"#eval-form .field-error[data-for='eval.max_new_tokens']\").textContent"
        )
        page.fill("#eval-form [data-path='eval.max_new_tokens']", "8")
        page.click("#eval-btn")
        page.wait_for_function(f"document.querySelector('#job-title').textContent === 'evaluation {name}'")
    for name in ("tuned", "base"):
        page.click(f".job-item[data-kind='evals'][data-name='{name}']")
        wait_job(page, f"evaluation {name}")
        page.wait_for_selector("#job-images img[alt='chart_lm.png']")
        assert "perplexity" in page.inner_text("#job-report")
    page.click("#compare-btn")
    page.check("#cmp-tuned")
    page.check("#cmp-base")
    page.fill("#compare-name", "tuned-vs-base")
    page.click("#compare-launch")
    wait_job(page, "comparison tuned-vs-base")
    report = page.inner_text("#job-report")
    assert "| loss |" in report and "tuned" in report and "base" in report
    page.wait_for_function("document.querySelector(\"#job-images img[alt='compare_lm.png']\").naturalWidth > 0")
