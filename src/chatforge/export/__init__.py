"""Export: merge adapters, quantize, write GGUF, checksums."""
