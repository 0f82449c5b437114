"""Training: the Trainer, optimizer and schedule factories, EMA, checkpoints, the run directory."""
