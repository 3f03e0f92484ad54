"""Training: the explicit training loop, packing, losses, adapters, checkpoints and resume."""
