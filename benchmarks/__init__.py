"""Benchmarks, run as `python -m benchmarks.NAME`: the speed of training, augmentation, the input pipeline,
inference and prep, and a peer model's accuracy; most write their section of docs/benchmarks.md."""
