"""Models: load causal LMs and tokenizers from local paths, GGUF files, the embedded default, or tiny builders."""
