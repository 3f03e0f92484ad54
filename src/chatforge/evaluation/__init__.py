"""Evaluation: metrics (perplexity, BLEU, ROUGE, slot F1, refusal), eval tasks and reports."""
