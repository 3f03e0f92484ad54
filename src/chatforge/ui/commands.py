"""`chatforge ui`: serve the training web UI for one workspace folder.

    chatforge ui                                 workspace ./chatforge-ui, http://127.0.0.1:7860/
    chatforge ui --workspace ~/work --port 8080
    chatforge ui --host 0.0.0.0 --token SECRET   other machines may connect; every API call needs the token

The UI only reads and writes below the workspace: put dataset files in WORKSPACE/data (or upload them from the page)
and local model folders in WORKSPACE/models. Runs are `chatforge train` subprocesses writing to WORKSPACE/runs/NAME.
"""

from __future__ import annotations

import argparse
import os
import secrets

from chatforge.errors import ChatforgeError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="chatforge ui", description="Serve the training web UI.")
    ap.add_argument("--workspace", default="chatforge-ui", help="folder the UI works in (default ./chatforge-ui)")
    ap.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    ap.add_argument("--port", type=int, default=7860)
    ap.add_argument(
        "--token",
        default=os.environ.get("CHATFORGE_UI_TOKEN"),
        help="access token every API call must carry (env CHATFORGE_UI_TOKEN); 'random' makes one up",
    )
    ap.add_argument("--device", default="cpu", help="device for chat and export checks (cpu, cuda, cuda:N)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import uvicorn

    from chatforge.ui.app import LOOPBACK_HOSTS, create_app

    token = secrets.token_urlsafe(16) if args.token == "random" else args.token
    loopback = args.host in LOOPBACK
    if not loopback and not token:
        # The UI starts processes and writes files: never expose it to a network without a token.
        raise ChatforgeError(f"--host {args.host} is not loopback: give --token TOKEN (or --token random)")
    app = create_app(
        args.workspace, token=token, allowed_hosts=LOOPBACK_HOSTS if loopback else None, device=args.device
    )
    shown = "localhost" if loopback else args.host
    query = f"?token={token}" if token else ""
    print(f"chatforge ui: http://{shown}:{args.port}/{query}  (workspace {app.state.workspace.root})", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
