"""`chatforge ui`: a training web UI over one workspace folder (configure, launch and watch runs, evaluate and compare,
chat with a run, export it). `chatforge.ui.app.create_app` builds the FastAPI app; `chatforge.ui.commands` runs it."""
