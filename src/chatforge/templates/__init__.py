"""Chat templates: render conversations to token ids with a per-token trained mask; one source of truth each."""
