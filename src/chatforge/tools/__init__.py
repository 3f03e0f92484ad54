"""Tools a chat model can call (e.g. the CrossWOZ hotel search)."""
