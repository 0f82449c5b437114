"""Keep credentials out of what a run publishes (MLflow params, tags, artifacts).

Two rules: a value whose key looks secret (password, token, api_key, ...) is replaced by `REDACTED`, and
a URL's user:password part is replaced wherever it appears. Environment variables are never published
at all, so they need no rule here.

Messages too: MLflow puts the request URL, credentials included, into its exceptions ("API request to
http://user:pw@host/... failed") and its own log lines; every message of ours that can carry them goes
through `redact_text`, and `redact_mlflow_logs` filters what MLflow's log handler writes.
"""

from __future__ import annotations

import logging
import re
from typing import Any

REDACTED = "***"

# Matched against each component of a dotted key (`tracking.tags.api_token` -> `api_token`).
_SECRET_KEY = re.compile(
    r"(pass(word|wd)?|secret|token|api[_-]?key|access[_-]?key|credential|auth|private[_-]?key|cookie|session)",
    re.IGNORECASE,
)
# scheme://user:password@host -> scheme://***@host (also bare user@ with a token as the user name).
_URL_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")


def is_secret_key(key: str) -> bool:
    """True when any component of a dotted key looks like it names a credential."""
    return any(_SECRET_KEY.search(part) for part in key.split("."))


def redact_text(text: str) -> str:
    """Remove credentials embedded in URLs."""
    return _URL_USERINFO.sub(rf"\g<scheme>{REDACTED}@", text)


def error_summary(err: BaseException) -> str:
    """The first line of an exception's message (at most 300 characters), credentials removed."""
    text = redact_text(str(err)).strip()
    return (text.splitlines()[0][:300] if text else "") or type(err).__name__


def redact_value(key: str, value: Any) -> Any:
    if value is None:
        return None
    if is_secret_key(key):
        return REDACTED
    return redact_text(value) if isinstance(value, str) else value


def redact_tree(value: Any, key: str = "") -> Any:
    """A copy of a nested dict/list config with secret-looking keys and URL credentials redacted."""
    if isinstance(value, dict):
        return {k: redact_tree(v, f"{key}.{k}" if key else str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact_tree(v, key) for v in value)
    return redact_value(key, value)


class RedactingFilter(logging.Filter):
    """A handler filter that removes URL credentials from every record it passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if (clean := redact_text(message)) != message:
            record.msg, record.args = clean, None
        return True


def redact_mlflow_logs() -> None:
    """Filter MLflow's log handler (its loggers do not propagate, so ours never see those records).
    Call it after importing mlflow, which installs the handler; calling it again adds nothing."""
    for handler in logging.getLogger("mlflow").handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
