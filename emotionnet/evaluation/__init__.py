"""Scoring models: the evaluation result, metrics, `evaluate()`, report files and plots."""
