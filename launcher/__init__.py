"""`emotionnet-launch`'s library: typed launch options -> `accelerate launch` commands, or SLURM batch
scripts rendered and submitted."""
