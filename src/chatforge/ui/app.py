"""The FastAPI app behind `chatforge ui`: a JSON API over the workspace plus the static page that drives it.

Training, evaluation, comparison and export run as subprocesses of the real CLI (`chatforge train|eval|export`), so
the page can do nothing the command line could not, and a run outlives the UI. Chat loads the run's model in this
process with the serving engine. Every path in a request or a config is checked to lie below the workspace.

Safety: the server binds to loopback by default; an optional access token is required on every API call (header
`Authorization: Bearer TOKEN`, or `?token=` for images); requests that change anything must carry the
`X-Chatforge-UI` header (a cross-site page cannot send it without a CORS preflight, which this app never grants),
and when bound to loopback the Host header must name loopback (DNS-rebinding guard).
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response

from chatforge.config import ConfigError, config_to_dict, load_config, save_config
from chatforge.errors import ChatforgeError
from chatforge.paths import sha256_file
from chatforge.ui.forms import config_from_form, form_spec
from chatforge.ui.workspace import DONE_FILE, PathError, Workspace, check_name

EMBEDDED = "smollm2-135m-instruct"
DATA_SUFFIXES = (".jsonl", ".json", ".txt", ".md", ".parquet", ".csv")
STATIC = {"app.js": "text/javascript", "style.css": "text/css"}
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
MAX_UPLOAD = 512 << 20
log = logging.getLogger("chatforge.ui")


class UIError(Exception):
    """An API error answered as JSON: {error, problems?}."""

    def __init__(self, status: int, message: str, problems: list[tuple[str, str]] | None = None):
        super().__init__(message)
        self.status, self.message, self.problems = status, message, problems


def _schemas():
    from chatforge.evaluation.config import EvalRunConfig
    from chatforge.training.config import TrainRunConfig

    return TrainRunConfig, EvalRunConfig


class ChatModels:
    """The run models loaded for chat (the most recent few), each behind a lock: the engine decodes one at a time."""

    def __init__(self, keep: int = 2, device: str = "cpu"):
        self.keep, self.device = keep, device
        self._engines: dict[tuple, tuple[Any, threading.Lock]] = {}
        self._lock = threading.Lock()

    def get(self, model: str, adapter: str | None, template: str | None):
        from chatforge.serving.engine import Engine

        key = (model, adapter, template)
        with self._lock:
            if key not in self._engines:
                engine = Engine.load(model, adapter=adapter, template=template, device=self.device)
                self._engines[key] = (engine, threading.Lock())
                while len(self._engines) > self.keep:
                    self._engines.pop(next(iter(self._engines)))
            return self._engines[key]


def create_app(
    workspace: str | Path,
    *,
    token: str | None = None,
    allowed_hosts: set[str] | None = None,
    device: str = "cpu",
) -> FastAPI:
    """The UI app over `workspace` (created if missing). `allowed_hosts`: Host header names accepted (None = any)."""
    ws = Workspace(workspace)
    chat = ChatModels(device=device)
    TrainRunConfig, EvalRunConfig = _schemas()
    train_skip = ("output",)
    eval_skip = ("output",)

    app = FastAPI(title="chatforge ui", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.workspace = ws

    @app.exception_handler(UIError)
    async def _ui_error(request: Request, err: UIError):
        body: dict[str, Any] = {"error": err.message}
        if err.problems is not None:
            body["problems"] = [list(p) for p in err.problems]
        return JSONResponse(body, status_code=err.status)

    @app.exception_handler(ChatforgeError)
    async def _user_error(request: Request, err: ChatforgeError):
        problems = getattr(err, "problems", None)
        status = 403 if isinstance(err, PathError) else 400
        body: dict[str, Any] = {"error": str(err)}
        if problems is not None:
            body["problems"] = [list(p) for p in problems]
        return JSONResponse(body, status_code=status)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception):
        # A bug or an environment problem (e.g. a model folder that does not load): still JSON the page can show.
        log.error("unhandled error on %s", request.url.path, exc_info=err)
        return JSONResponse({"error": f"internal error: {type(err).__name__}: {err}"}, status_code=500)

    @app.middleware("http")
    async def _guard(request: Request, call_next):
        if allowed_hosts is not None:
            host = request.headers.get("host", "")
            name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            if name not in allowed_hosts:
                return JSONResponse({"error": f"host {host!r} not allowed"}, status_code=403)
        if request.url.path.startswith("/api/"):
            if token is not None:
                header = request.headers.get("authorization", "")
                given = header[7:].strip() if header.lower().startswith("bearer ") else ""
                given = given or request.query_params.get("token", "")
                if not secrets.compare_digest(given.encode(), token.encode()):
                    return JSONResponse({"error": "missing or invalid access token"}, status_code=401)
            if request.method not in ("GET", "HEAD") and request.headers.get("x-chatforge-ui") != "1":
                return JSONResponse({"error": "missing X-Chatforge-UI header"}, status_code=403)
        return await call_next(request)

    # -- page ------------------------------------------------------------------------------------------------------

    def _static(name: str) -> str:
        return resources.files("chatforge.ui").joinpath(f"static/{name}").read_text("utf-8")

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse(_static("index.html"))

    @app.get("/static/{name}")
    async def static(name: str):
        if name not in STATIC:
            raise UIError(404, f"no static file {name!r}")
        return Response(_static(name), media_type=STATIC[name])

    @app.get("/api/info")
    async def info():
        from chatforge import __version__

        return {"workspace": str(ws.root), "version": __version__, "token_required": token is not None}

    # -- helpers ---------------------------------------------------------------------------------------------------

    async def body(request: Request) -> dict[str, Any]:
        try:
            data = await request.json()
        except ValueError:
            raise UIError(400, "the request body is not JSON") from None
        if not isinstance(data, dict):
            raise UIError(400, "the request body must be a JSON object")
        return data

    def model_spec(text: str, path: str, problems: list[tuple[str, str]]) -> None:
        """The embedded model name, or a folder/file below the workspace."""
        if text.strip().lower() == EMBEDDED:
            return
        try:
            ws.path(text, must_exist=True, what="model")
        except PathError as err:
            problems.append((path, str(err)))

    def check_paths(cfg: Any, problems: list[tuple[str, str]]) -> None:
        """Every file a config names must lie below the workspace (and exist)."""
        model_spec(cfg.model.name_or_path, "model.name_or_path", problems)
        for key in ("adapter", "tokenizer"):
            value = getattr(cfg.model, key)
            if value is not None:
                model_spec(value, f"model.{key}", problems)
        for key in ("dataset_info", "dataset_dir"):
            value = getattr(cfg.data, key, None)
            if value is not None:
                try:
                    ws.path(value, must_exist=True, what=key)
                except PathError as err:
                    problems.append((f"data.{key}", str(err)))
        registry: dict[str, Any] = {}
        bad_registry = any(p in ("data.dataset_info", "data.dataset_dir") for p, _ in problems)
        if cfg.data.dataset_info is not None and not bad_registry:
            from chatforge.data.llamafactory import load_dataset_info

            # The loader refuses a registry with any entry outside its folder (or data.dataset_dir), as train does.
            root = ws.path(cfg.data.dataset_dir) if cfg.data.dataset_dir is not None else None
            try:
                registry = load_dataset_info(ws.path(cfg.data.dataset_info), root=root)
            except ChatforgeError as err:
                problems.append(("data.dataset_info", str(err)))
                bad_registry = True
        for split in ("train", "val"):
            for i, item in enumerate(getattr(cfg.data, split)):
                if item in registry:  # a dataset_info name: its file, symlinks resolved, must lie below the workspace
                    if registry[item].path is not None:
                        try:
                            ws.path(registry[item].path, what=f"dataset {item!r} file_name")
                        except PathError as err:
                            problems.append((f"data.{split}[{i}]", str(err)))
                    continue
                try:
                    # A name that is no file may be an entry of a registry that did not load: that is reported once.
                    ws.path(item, must_exist=not (bad_registry and cfg.data.dataset_info), what="data file")
                except PathError as err:
                    problems.append((f"data.{split}[{i}]", str(err)))
        resume = getattr(getattr(cfg, "train", None), "resume", None)
        if resume not in (None, "auto"):
            try:
                ws.path(resume, must_exist=True, what="checkpoint")
            except PathError as err:
                problems.append(("train.resume", str(err)))

    def validate_train(data: dict[str, Any], name_required: bool) -> tuple[Any, list[tuple[str, str]]]:
        problems: list[tuple[str, str]] = []
        name = str(data.get("name", "")).strip()
        try:
            check_name(name, "run name")
            if (ws.root / "runs" / name).exists():
                problems.append(("name", f"runs/{name} already exists; choose another name"))
        except ChatforgeError as err:
            if name_required or name:
                problems.append(("name", str(err)))
        spec = form_spec(TrainRunConfig, train_skip)
        fixed = [f"output.dir=runs/{name or 'run'}"]
        cfg, more = config_from_form(TrainRunConfig, spec, data.get("values") or {}, fixed)
        problems += more
        if cfg is not None:
            check_paths(cfg, problems)
            if not cfg.data.train:
                problems.append(("data.train", "pick at least one training file"))
        return cfg, problems

    def run_config(name: str) -> Any:
        folder = ws.job_dir("runs", name)
        for fname in ("config.yaml", "launch.yaml"):
            if (folder / fname).is_file():
                return load_config(folder / fname, [], TrainRunConfig)
        raise UIError(404, f"run {name!r} has no config")

    def job(kind: str, name: str) -> tuple[Path, dict[str, Any], str]:
        folder = ws.job_dir(kind, name)
        meta = ws.meta(folder)
        if meta is None:
            raise UIError(404, f"no {kind[:-1] if kind != 'compare' else kind} named {name!r}")
        return folder, meta, ws.status(kind, folder, meta)

    def job_summary(kind: str, name: str, folder: Path, meta: dict[str, Any], status: str) -> dict[str, Any]:
        out = dict(
            kind=kind,
            name=name,
            status=status,
            started=meta.get("started"),
            ended=meta.get("ended"),
            command=" ".join(meta.get("command", [])),
            folder=ws.rel(folder),
        )
        if kind == "runs":
            out["progress"] = last_progress(folder)
        return out

    def last_progress(folder: Path) -> dict[str, Any] | None:
        """The latest train record, read from the end of metrics.jsonl (the list polls every second)."""
        path = folder / "metrics.jsonl"
        try:
            with open(path, "rb") as fh:
                size = fh.seek(0, 2)
                fh.seek(max(0, size - 16384))
                tail = fh.read().decode("utf-8", errors="replace")
        except OSError:
            return None
        for line in reversed(tail.splitlines()):
            if '"kind": "train"' in line:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue  # the first line of the tail may be cut, the last may still be being written
                return {k: row.get(k) for k in ("step", "loss", "lr", "tok_per_s")}
        return None

    def model_of_run(name: str) -> tuple[str, str | None, str | None]:
        """(model spec, adapter or None, template) to load a finished run: base + adapter, or the run folder itself."""
        folder, meta, status = job("runs", name)
        if not (folder / "summary.json").is_file():
            raise UIError(409, f"run {name!r} is {status}; chat and export need a finished run")
        cfg = run_config(name)
        base = cfg.model.name_or_path
        base = base if base.strip().lower() == EMBEDDED else str(ws.path(base, must_exist=True, what="model"))
        if (folder / "adapter_config.json").is_file():
            return base, str(folder), cfg.template.name
        return str(folder), None, cfg.template.name

    # -- schema, validation and files ------------------------------------------------------------------------------

    @app.get("/api/schema/train")
    async def train_schema():
        return {"sections": form_spec(TrainRunConfig, train_skip)}

    @app.post("/api/validate/train")
    async def validate(request: Request):
        _, problems = validate_train(await body(request), name_required=False)
        return {"ok": not problems, "problems": [list(p) for p in problems]}

    @app.get("/api/files")
    def files():
        out = []
        for p in sorted(ws.root.rglob("*")):
            rel = p.relative_to(ws.root)
            if rel.parts[0] in ("runs", "evals", "exports", "compare", "models") or any(
                s.startswith(".") for s in rel.parts
            ):
                continue
            if p.is_file() and p.suffix.lower() in DATA_SUFFIXES:
                out.append({"path": rel.as_posix(), "bytes": p.stat().st_size})
        models = [ws.rel(p.parent) for p in sorted((ws.root / "models").rglob("config.json"))]
        return {"files": out, "models": [EMBEDDED, *models]}

    @app.put("/api/files/{path:path}")
    async def upload(path: str, request: Request):
        target = ws.path(f"data/{path}", what="upload")
        if ws.root / "data" not in target.parents:
            raise UIError(403, "uploads go into data/")
        if target.suffix.lower() not in DATA_SUFFIXES:
            raise UIError(400, f"{path}: not a data file ({', '.join(DATA_SUFFIXES)})")
        if target.exists():
            raise UIError(409, f"data/{path} already exists")
        size = 0
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".part")
        try:
            with open(tmp, "wb") as fh:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > MAX_UPLOAD:
                        raise UIError(413, f"upload larger than {MAX_UPLOAD >> 20} MiB")
                    fh.write(chunk)
            tmp.replace(target)
        finally:
            tmp.unlink(missing_ok=True)
        return {"path": ws.rel(target), "bytes": size}

    @app.get("/api/preview")
    def preview_file(
        file: str,
        model: str = EMBEDDED,
        template: str | None = None,
        mask: str = "all_assistant",
        format: str = "auto",
        dataset_info: str | None = None,
        dataset_dir: str | None = None,
        limit: int = 3,
    ):
        from chatforge.ui.preview import preview

        problems: list[tuple[str, str]] = []
        model_spec(model, "model.name_or_path", problems)
        if problems:
            raise UIError(403, problems[0][1], problems)
        path = ws.path(file, must_exist=dataset_info is None, what="data file")
        info = str(ws.path(dataset_info, must_exist=True, what="dataset_info")) if dataset_info else None
        root = str(ws.path(dataset_dir, must_exist=True, what="dataset_dir")) if info and dataset_dir else None
        spec = model if model.strip().lower() == EMBEDDED else str(ws.path(model))
        source = file if info and not path.exists() else str(path)
        if source == file:  # a dataset_info name: the file it names must lie below the workspace
            from chatforge.data.llamafactory import load_dataset_info

            spec_ = load_dataset_info(info, root=root).get(file)
            if spec_ is None:
                raise UIError(404, f"{file!r} is neither a file in the workspace nor a dataset in {dataset_info}")
            if spec_.path is not None:
                ws.path(spec_.path, what=f"dataset {file!r} file_name")
        return preview(
            source,
            model=spec,
            template=template or None,
            mask=mask,
            format=format,
            dataset_info=info,
            dataset_dir=root,
            limit=max(1, min(limit, 20)),
        )

    # -- jobs (shared) ---------------------------------------------------------------------------------------------

    @app.get("/api/jobs/{kind}")
    def list_jobs(kind: str):
        if kind not in DONE_FILE:
            raise UIError(404, f"unknown kind {kind!r}")
        out = []
        for name, folder, meta in ws.jobs(kind):
            out.append(job_summary(kind, name, folder, meta, ws.status(kind, folder, meta)))
        out.sort(key=lambda j: j.get("started") or 0, reverse=True)
        return {"jobs": out}

    @app.get("/api/jobs/{kind}/{name}")
    def job_detail(kind: str, name: str):
        folder, meta, status = job(kind, name)
        out = job_summary(kind, name, folder, meta, status)
        out["error"] = ws.error_text(folder, meta, status)
        out["log"] = ws.log_tail(folder / "stderr.log", 12)
        pngs = sorted(p.name for p in folder.glob("*.png"))
        out["images"] = pngs
        if kind == "runs":
            summary = folder / "summary.json"
            out["summary"] = json.loads(summary.read_text()) if summary.is_file() else None
            for fname in ("config.yaml", "launch.yaml"):
                if (folder / fname).is_file():
                    out["config"] = (folder / fname).read_text(encoding="utf-8")
                    break
        if kind in ("evals", "compare"):
            md = folder / ("report.md" if kind == "evals" else "compare.md")
            out["report"] = md.read_text(encoding="utf-8") if md.is_file() else None
        if kind == "evals" and (folder / "report.json").is_file():
            out["tasks"] = json.loads((folder / "report.json").read_text(encoding="utf-8")).get("tasks")
        if kind == "exports":
            out["model_folder"] = ws.rel(folder / "model") if (folder / "model").is_dir() else None
            out["verify"] = meta.get("verify")
        return out

    @app.get("/api/jobs/{kind}/{name}/file/{fname}")
    def job_file(kind: str, name: str, fname: str):
        folder, _, _ = job(kind, name)
        path = ws.path(folder / fname, must_exist=True, what="file")
        if path.parent != folder or path.suffix not in (".png", ".md", ".json", ".jsonl", ".yaml", ".log"):
            raise UIError(403, f"{fname}: not a file the UI serves")
        return FileResponse(path)

    @app.post("/api/jobs/{kind}/{name}/stop")
    def stop(kind: str, name: str):
        folder, _, _ = job(kind, name)
        return {"stopped": ws.stop(kind, folder)}

    # -- training runs ---------------------------------------------------------------------------------------------

    @app.post("/api/runs")
    async def create_run(request: Request):
        data = await body(request)
        cfg, problems = validate_train(data, name_required=True)
        if problems:
            raise UIError(422, "the config has problems", problems)
        name = data["name"].strip()
        folder = ws.job_dir("runs", name)
        from chatforge.training.run_folder import MARKER  # here: it pulls in torch, which the page does not need

        folder.mkdir(parents=True)
        # `chatforge train` writes only into an empty folder or one it made; this folder already holds the launch
        # config and the logs, so mark it as a run folder before the child starts.
        (folder / MARKER).touch()
        save_config(cfg, folder / "launch.yaml")
        meta = ws.launch("runs", name, ["train", f"runs/{name}/launch.yaml"], folder)
        return {"name": name, "pid": meta["pid"]}

    @app.get("/api/runs/{name}/metrics")
    def metrics(name: str, offset: int = 0):
        folder, _, status = job("runs", name)
        path = folder / "metrics.jsonl"
        rows: list[dict[str, Any]] = []
        if path.is_file():
            with open(path, "rb") as fh:
                size = fh.seek(0, 2)
                if offset > size:  # the file was rewritten (a resumed run truncates it): start over
                    offset = 0
                fh.seek(offset)
                chunk = fh.read()
            complete = chunk[: chunk.rfind(b"\n") + 1]  # a line still being written waits for the next poll
            for line in complete.decode("utf-8", errors="replace").splitlines():
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    continue
            offset += len(complete)
        return {"rows": rows, "offset": offset, "status": status}

    @app.post("/api/runs/{name}/chat")
    async def chat_run(name: str, request: Request):
        data = await body(request)
        return await _in_thread(_chat, name, data)

    def _chat(name: str, data: dict[str, Any]) -> dict[str, Any]:
        from chatforge.data.schema import Conversation, Message
        from chatforge.serving.engine import SamplingParams

        messages = data.get("messages")
        if not isinstance(messages, list) or not messages:
            raise UIError(400, "messages must be a non-empty list of {role, content}")
        try:
            conv = Conversation([Message(role=m["role"], content=str(m["content"])) for m in messages])
            params = SamplingParams(
                max_new_tokens=int(data.get("max_new_tokens", 128)), temperature=float(data.get("temperature", 0.0))
            )
        except (KeyError, TypeError, ValueError) as err:
            raise UIError(400, f"bad chat request: {err}") from None
        engine, lock = chat.get(*model_of_run(name))
        t0 = time.perf_counter()
        with lock:
            done = engine.generate([conv], params)[0]
        return dict(
            reply=done.message.content or done.text,
            finish_reason=done.finish_reason,
            completion_tokens=done.completion_tokens,
            seconds=round(time.perf_counter() - t0, 3),
        )

    @app.post("/api/runs/{name}/export")
    async def export_run(name: str, request: Request):
        data = await body(request)
        target = check_name(str(data.get("name") or name), "export name")
        model, adapter, _ = model_of_run(name)
        folder = ws.job_dir("exports", target)
        if folder.exists():
            raise UIError(409, f"exports/{target} already exists; choose another name", [("name", "already exists")])
        args = ["export", "--model", model, "--output", f"exports/{target}/model"]
        if adapter:
            args[3:3] = ["--adapter", adapter]
        ws.launch("exports", target, args)
        (folder / "source-run.txt").write_text(name + "\n")
        return {"name": target}

    @app.post("/api/jobs/exports/{name}/verify")
    async def verify_export(name: str, request: Request):
        return await _in_thread(_verify, name)

    def _verify(name: str) -> dict[str, Any]:
        """Checksums of every file, then the exported model and the run (base + adapter) answer one prompt greedily:
        the merge is right when both replies are the same."""
        from chatforge.data.schema import Conversation, Message
        from chatforge.serving.engine import SamplingParams

        folder, meta, status = job("exports", name)
        if status != "finished":
            raise UIError(409, f"export {name!r} is {status}")
        model_dir = folder / "model"
        bad, checked = [], 0
        listed = set()
        for line in (model_dir / "SHA256SUMS").read_text().splitlines():
            digest, _, rel = line.partition("  ")
            path = ws.path(model_dir / rel, what="file")
            listed.add(path)
            checked += 1
            if not path.is_file() or sha256_file(path) != digest:
                bad.append(rel)
        extra = [ws.rel(p) for p in model_dir.rglob("*") if p.is_file() and p.name != "SHA256SUMS" and p not in listed]
        result: dict[str, Any] = dict(checksums_ok=not bad and not extra, files=checked, bad=bad, unlisted=extra)
        source = (folder / "source-run.txt").read_text().strip() if (folder / "source-run.txt").is_file() else None
        if source:
            run_model = model_of_run(source)
            conv = Conversation([Message(role="user", content="Say hello.")])
            params = SamplingParams(max_new_tokens=16)
            replies = []
            for spec in ((str(model_dir), None, run_model[2]), run_model):
                engine, lock = chat.get(*spec)
                with lock:
                    replies.append(engine.generate([conv], params)[0].text)
            result.update(prompt="Say hello.", reply_export=replies[0], reply_run=replies[1])
            result["same_reply"] = replies[0] == replies[1]
        result["ok"] = result["checksums_ok"] and result.get("same_reply", True)
        meta["verify"] = result
        ws._write_meta(folder, meta)
        return result

    # -- evaluation and comparison ---------------------------------------------------------------------------------

    @app.get("/api/schema/eval")
    def eval_schema(run: str | None = None):
        values: dict[str, Any] = {}
        if run:
            cfg = run_config(run)
            folder = ws.job_dir("runs", run)
            lora = (folder / "adapter_config.json").is_file()
            values["model.name_or_path"] = cfg.model.name_or_path if lora else f"runs/{run}"
            values["model.adapter"] = f"runs/{run}" if lora else None
            for key in ("name", "mask"):
                values[f"template.{key}"] = getattr(cfg.template, key)
            values["data.val"] = cfg.data.val
            values["data.max_length"] = cfg.data.max_length
        return {"sections": form_spec(EvalRunConfig, eval_skip, values)}

    @app.post("/api/evals")
    async def create_eval(request: Request):
        data = await body(request)
        problems: list[tuple[str, str]] = []
        name = str(data.get("name", "")).strip()
        try:
            check_name(name, "eval name")
            if (ws.root / "evals" / name).exists():
                problems.append(("name", f"evals/{name} already exists; choose another name"))
        except ChatforgeError as err:
            problems.append(("name", str(err)))
        spec = form_spec(EvalRunConfig, eval_skip)
        fixed = [f"output.dir=evals/{name or 'eval'}", "output.overwrite=true"]
        cfg, more = config_from_form(EvalRunConfig, spec, data.get("values") or {}, fixed)
        problems += more
        if cfg is not None:
            check_paths(cfg, problems)
            if not cfg.data.val:
                problems.append(("data.val", "pick at least one evaluation file"))
        if problems:
            raise UIError(422, "the config has problems", problems)
        folder = ws.job_dir("evals", name)
        folder.mkdir(parents=True)
        launch = folder.parent / f".{name}.launch.yaml"  # outside the output folder: eval wants it fresh
        launch.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True))
        ws.launch("evals", name, ["eval", f"evals/.{name}.launch.yaml"], folder)
        return {"name": name}

    @app.post("/api/compare")
    async def create_compare(request: Request):
        data = await body(request)
        name = check_name(str(data.get("name", "")).strip(), "comparison name")
        evals = data.get("evals")
        if not isinstance(evals, list) or len(evals) < 2:
            raise UIError(400, "pick at least two evaluations to compare")
        for e in evals:
            _, _, status = job("evals", check_name(str(e), "eval name"))
            if status != "finished":
                raise UIError(409, f"evaluation {e!r} is {status}")
        if (ws.root / "compare" / name).exists():
            raise UIError(409, f"compare/{name} already exists; choose another name")
        ws.launch("compare", name, ["eval", "compare", *[f"evals/{e}" for e in evals], "--output", f"compare/{name}"])
        return {"name": name}

    return app


async def _in_thread(fn, *args):
    """Run a blocking call (model load, generation) off the event loop; ChatforgeErrors keep their JSON answer."""
    import anyio

    return await anyio.to_thread.run_sync(lambda: fn(*args))


__all__ = ["ConfigError", "create_app"]
