"""The UI's API without a browser or subprocesses: workspace confinement (traversal, absolute paths, symlinks), the
access token, the cross-site and Host guards, form <-> config round trips, and job status read from folders."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serving extras (fastapi) are not installed")
from fastapi.testclient import TestClient

from chatforge.config import config_to_dict
from chatforge.errors import ChatforgeError
from chatforge.training.config import TrainRunConfig
from chatforge.ui.app import create_app
from chatforge.ui.forms import config_from_form, form_spec
from chatforge.ui.workspace import PathError, Workspace

H = {"X-Chatforge-UI": "1"}


@pytest.fixture
def ws(tmp_path):
    root = tmp_path / "ws"
    (root / "data").mkdir(parents=True)
    (root / "data" / "a.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    (tmp_path / "secret.jsonl").write_text("{}\n")
    return root


def test_paths_stay_below_the_workspace(ws, tmp_path):
    w = Workspace(ws)
    assert w.path("data/a.jsonl", must_exist=True) == ws / "data" / "a.jsonl"
    (ws / "data" / "link.jsonl").symlink_to(tmp_path / "secret.jsonl")
    for bad in ("../secret.jsonl", str(tmp_path / "secret.jsonl"), "data/../../secret.jsonl", "data/link.jsonl", ""):
        with pytest.raises(PathError):
            w.path(bad)
    with pytest.raises(PathError, match="does not exist"):
        w.path("data/missing.jsonl", must_exist=True)


def test_api_refuses_files_outside(ws):
    c = TestClient(create_app(ws))
    for file in ("../secret.jsonl", "/etc/passwd"):
        r = c.get("/api/preview", params={"file": file})
        assert r.status_code == 403 and "outside the workspace" in r.json()["error"]
    r = c.get("/api/preview", params={"file": "data/a.jsonl", "model": "/etc"})
    assert r.status_code == 403
    r = c.put("/api/files/..%2F..%2Fevil.jsonl", content=b"{}", headers=H)
    assert r.status_code == 403
    assert not (ws.parent / "evil.jsonl").exists()
    r = c.put("/api/files/new.jsonl", content=b'{"text": "x"}\n', headers=H)
    assert r.status_code == 200 and (ws / "data" / "new.jsonl").read_bytes() == b'{"text": "x"}\n'
    assert c.put("/api/files/new.jsonl", content=b"{}", headers=H).status_code == 409
    assert c.put("/api/files/run.sh", content=b"x", headers=H).status_code == 400
    assert c.get("/api/jobs/runs/..").status_code in (400, 404)
    assert [f["path"] for f in c.get("/api/files").json()["files"]] == ["data/a.jsonl", "data/new.jsonl"]


def test_token_and_guards(ws):
    c = TestClient(
        create_app(ws, token="s3cret", allowed_hosts={"127.0.0.1", "localhost"}), base_url="http://localhost"
    )
    assert c.get("/").status_code == 200  # the page itself holds no data
    assert c.get("/api/info").status_code == 401
    assert c.get("/api/info", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert c.get("/api/info", headers={"Authorization": "Bearer s3cret"}).json()["token_required"] is True
    assert c.get("/api/info", params={"token": "s3cret"}).status_code == 200
    auth = {"Authorization": "Bearer s3cret"}
    # A cross-site form post cannot set the custom header.
    assert c.post("/api/validate/train", json={}, headers=auth).status_code == 403
    assert c.post("/api/validate/train", json={}, headers={**auth, **H}).status_code == 200
    # DNS rebinding: a foreign Host name is refused while bound to loopback.
    assert c.get("/api/info", headers={**auth, "Host": "evil.example:7860"}).status_code == 403


def test_non_loopback_needs_a_token():
    from chatforge.ui.commands import main

    with pytest.raises(ChatforgeError, match="--token"):
        main(["--host", "0.0.0.0", "--token", ""])


def test_form_round_trips_the_schema():
    spec = form_spec(TrainRunConfig, ("output",))
    paths = {f["path"] for s in spec for f in s["fields"]}
    assert {"train.learning_rate", "peft.target_modules", "data.train", "model.init"} <= paths
    assert not any(p.startswith("output.") for p in paths)
    defaults = {f["path"]: f["default"] for s in spec for f in s["fields"]}
    cfg, problems = config_from_form(TrainRunConfig, spec, defaults, [])
    assert problems == [] and config_to_dict(cfg) == config_to_dict(TrainRunConfig())
    field = {f["path"]: f for s in spec for f in s["fields"]}
    assert field["train.scheduler"]["kind"] == "choice" and "cosine" in field["train.scheduler"]["choices"]
    assert field["train.max_steps"]["optional"] and field["train.max_steps"]["limits"] == {"min": 1}
    values = {
        **defaults,
        "train.max_steps": "12",
        "peft.target_modules": "[q_proj, v_proj]",
        "template.default_system": "Note: be brief",
    }
    cfg, problems = config_from_form(TrainRunConfig, spec, values, ["output.dir=runs/x"])
    assert problems == []
    assert (cfg.train.max_steps, cfg.peft.target_modules) == (12, ["q_proj", "v_proj"])
    assert cfg.template.default_system == "Note: be brief" and cfg.output.dir == "runs/x"
    bad = {**defaults, "train.batch_size": "0", "train.scheduler": "step", "peft.r": "", "nope.x": "1"}
    _, problems = config_from_form(TrainRunConfig, spec, bad, [])
    where = {p for p, _ in problems}
    assert {"train.batch_size", "train.scheduler", "peft.r", "nope.x"} <= where


def test_status_from_the_folder(ws):
    w = Workspace(ws)
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    folder = ws / "runs" / "x"
    folder.mkdir()
    meta = dict(kind="runs", name="x", pid=done.pid, started=time.time())
    (folder / "ui-job.json").write_text(json.dumps(meta))
    assert w.status("runs", folder, w.meta(folder)) == "failed"
    (folder / "summary.json").write_text("{}")
    assert w.status("runs", folder, w.meta(folder)) == "finished"
    # A live process with another start time is a reused pid, not our run (Linux /proc only).
    if not Path("/proc/self/stat").exists():
        return
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        from chatforge.ui.workspace import _proc_start_time

        start = _proc_start_time(live.pid)
        (folder / "summary.json").unlink()
        (folder / "ui-job.json").write_text(json.dumps({**meta, "pid": live.pid, "proc_start": start}))
        assert w.status("runs", folder, w.meta(folder)) == "running"
        (folder / "ui-job.json").write_text(json.dumps({**meta, "pid": live.pid, "proc_start": start - 1}))
        assert w.status("runs", folder, w.meta(folder)) == "failed"
    finally:
        live.kill()
        live.wait()


def test_dataset_info_entries_stay_inside(ws, tmp_path):
    """A registry with an entry outside its folder (or data.dataset_dir) is refused as a whole, as `chatforge train`
    refuses it; an entry that is a symlink out of the workspace, which the loader allows, is refused by the UI."""
    info = ws / "data" / "dataset_info.json"
    info.write_text(json.dumps({"inside": {"file_name": "a.jsonl"}, "outside": {"file_name": "../../secret.jsonl"}}))
    c = TestClient(create_app(ws))
    spec = c.get("/api/schema/train").json()["sections"]
    values = {f["path"]: f["default"] for s in spec for f in s["fields"]}
    values["data.dataset_info"] = "data/dataset_info.json"

    def problems(**more) -> dict[str, str]:
        r = c.post("/api/validate/train", json={"name": "x", "values": {**values, **more}}, headers=H)
        return {p: m for p, m in r.json()["problems"]}

    for root in (None, "."):  # the registry's folder, then the whole workspace as data.dataset_dir
        got = problems(**{"data.train": "[inside]", "data.dataset_dir": root})
        assert "outside.file_name" in got["data.dataset_info"] and "points outside" in got["data.dataset_info"], got
        assert "data.train[0]" not in got, got  # the registry's problem is reported once, not per name
    r = c.get("/api/preview", params={"file": "inside", "dataset_info": "data/dataset_info.json"})
    assert r.status_code == 400 and "points outside" in r.json()["error"]

    (ws / "data" / "link.jsonl").symlink_to(tmp_path / "secret.jsonl")
    info.write_text(json.dumps({"inside": {"file_name": "a.jsonl"}, "link": {"file_name": "link.jsonl"}}))
    for name, bad in (("inside", False), ("link", True)):
        got = problems(**{"data.train": f"[{name}]"})
        assert "data.dataset_info" not in got, got
        assert ("data.train[0]" in got) == bad, got
        if bad:
            assert "outside the workspace" in got["data.train[0]"]
    got = problems(**{"data.train": "[inside]", "data.dataset_dir": ".."})
    assert "outside the workspace" in got["data.dataset_dir"], got
    r = c.get("/api/preview", params={"file": "link", "dataset_info": "data/dataset_info.json"})
    assert r.status_code == 403 and "outside the workspace" in r.json()["error"]
    params = {"file": "inside", "dataset_info": "data/dataset_info.json", "dataset_dir": ".."}
    r = c.get("/api/preview", params=params)
    assert r.status_code == 403 and "outside the workspace" in r.json()["error"]
