"""The one masking policy: which configured values are secrets, and how they are hidden
wherever the agent prints or stores configuration or a backend's answer (its own log,
``check-config``, ``/readyz``, dead-letter files)."""

from __future__ import annotations

import re
from collections.abc import Iterable

from yarl import URL

MASK = "**********"
# Header names whose values are treated as secrets (masked, scrubbed, never logged).
SENSITIVE_HEADER = re.compile(r"auth|token|secret|passw|cookie|api[-_]?key|signature", re.I)


def is_secret_header(name: str) -> bool:
    return SENSITIVE_HEADER.search(name) is not None


def masked_headers(headers: dict[str, str]) -> dict[str, str]:
    return {k: MASK if is_secret_header(k) else v for k, v in headers.items()}


def masked_url(value: str | URL) -> str:
    url = URL(value) if isinstance(value, str) else value
    if url.password is not None:
        url = url.with_password(MASK)
    return str(url)


class Scrubber:
    """Replaces every known secret value in a text by ``MASK`` (longest first, so that a
    secret containing another is hidden whole)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text
