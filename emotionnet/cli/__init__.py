"""Thin command-line entry points: parse, call one function, map errors to exit codes (exit_codes.py)."""
