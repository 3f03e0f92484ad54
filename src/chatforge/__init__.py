"""chatforge: from a Llama-family model and domain data to a chat model you can evaluate, export and serve."""

__version__ = "0.1.0"
