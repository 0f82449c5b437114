"""Keep credentials out of what a run publishes (MLflow params, tags, artifacts).

Two rules: a value whose key looks secret (password, token, api_key, ...) is replaced by `REDACTED`, and
a URL's user:password part is replaced wherever it appears. Environment variables are never published
at all, so they need no rule here.
"""

from __future__ import annotations

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
