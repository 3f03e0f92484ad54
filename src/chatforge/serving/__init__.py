"""Serving: the generation engine, the chat REPL and the OpenAI-compatible HTTP server with its web page."""
