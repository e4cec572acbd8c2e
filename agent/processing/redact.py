"""Redaction: secrets in messages and parsed fields masked before anything else sees them.

The chain runs before the pipeline, so no exporter, disk buffer, dead-letter file, metric
or log line of the agent ever holds the text a preset matched; only the count of
redactions per preset is kept (``redacted.<preset>``). The mask is the agent's one mask
text (``agent.secrets.MASK``).

Presets, applied in this order whatever order they are named in:

* ``bearer``: the credentials of an ``Authorization`` header or key (``Authorization:
  Basic …``, ``"authorization": "…"``; the scheme stays), and any ``Bearer <token>``;
* ``url_password``: the password of a url (``scheme://user:password@host``);
* ``aws``: access key ids (``AKIA…``, ``ASIA…``, 20 characters) and secret access keys
  (40 characters) given as ``aws_secret_access_key=…``, ``secretAccessKey: …`` and the like;
* ``jwt``: JSON web tokens (``eyJ….eyJ….…``);
* ``card``: card numbers (13 to 19 digits, spaces or dashes between) that pass the Luhn
  check;
* ``email``: e-mail addresses.

Custom redactions (``processing.redactions``) are a regex and a replacement, applied after
the presets. In parsed ``fields`` every string value is redacted (keys are not); a JSON
message with escapes (``\\u0040``) is parsed so that its fields are redacted as values.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson

from agent.processing.config import CustomRedaction
from agent.processing.span import extra_of
from agent.record import Record
from agent.secrets import MASK

# (name, quick test of the text (None: always), substitution returning (text, count))
_Rule = tuple[str, Callable[[str, str], bool] | None, Callable[[str], tuple[str, int]]]

_AUTHORIZATION = re.compile(
    r"(?i)\b(authorization[\"']?\s*[:=]\s*[\"']?)"
    r"(?:(basic|bearer|digest|token|negotiate|apikey|aws4-hmac-sha256)\s+)?"
    r"(?!\*{10})([^\s\"',;]+)"
)
_BEARER = re.compile(r"(?i)\b(bearer\s+)([A-Za-z0-9\-._~+/]+=*)")
_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s:/?#@\"']*:)([^\s@/?#\"']+)(@)")
_AWS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA|ABIA|ACCA|A3T[A-Z0-9])[A-Z0-9]{16}\b")
_AWS_SECRET = re.compile(
    r"(?i)((?:aws_?)?secret_?(?:access_?)?key[\"']?\s*[:=]\s*[\"']?)"
    r"([A-Za-z0-9/+=]{40})(?![A-Za-z0-9/+=])"
)
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*")
_CARD = re.compile(r"(?<![\d.])\d(?:[ -]?\d){12,18}(?![\d])")
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")


def luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        n = ord(ch) - 48
        if i & 1:
            n *= 2
            if n > 9:
                n -= 9
        total += n
    return total % 10 == 0


def _authorization(m: re.Match[str]) -> str:
    scheme = m.group(2)
    return m.group(1) + (scheme + " " if scheme else "") + MASK


def _bearer(text: str) -> tuple[str, int]:
    text, a = _AUTHORIZATION.subn(_authorization, text)
    text, b = _BEARER.subn(lambda m: m.group(1) + MASK, text)
    return text, a + b


def _url_password(text: str) -> tuple[str, int]:
    return _URL_PASSWORD.subn(lambda m: m.group(1) + MASK + m.group(3), text)


def _aws(text: str) -> tuple[str, int]:
    text, a = _AWS_KEY_ID.subn(MASK, text)
    text, b = _AWS_SECRET.subn(lambda m: m.group(1) + MASK, text)
    return text, a + b


def _jwt(text: str) -> tuple[str, int]:
    return _JWT.subn(MASK, text)


def _card(text: str) -> tuple[str, int]:
    count = 0

    def mask(m: re.Match[str]) -> str:
        nonlocal count
        digits = m.group(0).replace(" ", "").replace("-", "")
        if 13 <= len(digits) <= 19 and luhn(digits):
            count += 1
            return MASK
        return m.group(0)

    out = _CARD.sub(mask, text)
    return (out, count) if count else (text, 0)


def _email(text: str) -> tuple[str, int]:
    return _EMAIL.subn(MASK, text)


_AWS_PREFIXES = ("AKIA", "ASIA", "ABIA", "ACCA", "A3T")

PRESETS: dict[str, tuple[Callable[[str, str], bool], Callable[[str], tuple[str, int]]]] = {
    # name: (quick test of (text, text.lower()), substitution); in the order applied
    "bearer": (lambda t, low: "bearer" in low or "authorization" in low, _bearer),
    "url_password": (lambda t, low: "://" in t and "@" in t, _url_password),
    "aws": (lambda t, low: any(p in t for p in _AWS_PREFIXES) or "secret" in low, _aws),
    "jwt": (lambda t, low: "eyJ" in t, _jwt),
    "card": (lambda t, low: True, _card),
    "email": (lambda t, low: "@" in t, _email),
}
_NEEDS_LOWER = ("bearer", "aws")


def _custom(c: CustomRedaction) -> Callable[[str], tuple[str, int]]:
    pattern = re.compile(c.pattern)
    replacement = c.replacement
    return lambda text: pattern.subn(replacement, text)


class Redactor:
    """Masks secrets in a text, counting per redaction."""

    def __init__(
        self,
        names: list[str],
        custom: dict[str, CustomRedaction] | None = None,
        counters: Counter[str] | None = None,
    ) -> None:
        custom = custom or {}
        self.counters: Counter[str] = counters if counters is not None else Counter()
        rules: list[tuple[str, Callable[[str, str], bool] | None, Any]] = []
        for name, (quick, sub) in PRESETS.items():
            if name in names:
                rules.append((name, quick, sub))
        for name in names:
            if name in custom:
                rules.append((name, None, _custom(custom[name])))
        self.rules = rules
        self.lower = any(n in names for n in _NEEDS_LOWER)

    def text(self, text: str) -> str:
        low = text.lower() if self.lower else ""
        for name, quick, sub in self.rules:
            if quick is not None and not quick(text, low):
                continue
            new, n = sub(text)
            if n:
                self.counters["redacted." + name] += n
                text = new
                if self.lower:
                    low = text.lower()
        return text

    def value(self, value: Any, key: str | None = None) -> Any:
        """A parsed field's value with every string in it redacted. A string is looked
        at after its key (``key: value``), so that key-named secrets (``authorization``,
        ``aws_secret_access_key``) are found in fields as in the text."""
        if isinstance(value, str):
            if key is None:
                return self.text(value)
            prefix = key + ": "
            new = self.text(prefix + value)
            return new[len(prefix) :] if new.startswith(prefix) else self.text(value)
        if isinstance(value, dict):
            return {k: self.value(v, str(k)) for k, v in value.items()}
        if isinstance(value, list):
            return [self.value(v, key) for v in value]
        return value


class Redact:
    """The redaction stage of one container."""

    name = "redact"
    holds = False
    settled = True

    def __init__(
        self,
        names: list[str],
        custom: dict[str, CustomRedaction] | None = None,
        counters: Counter[str] | None = None,
        always_fields: bool = False,
    ) -> None:
        self.redactor = Redactor(names, custom, counters)
        # Fields are substrings of the raw message unless it has escapes, a regex parser
        # named them, or the parser replaced the message: then they are looked at even
        # when the message held nothing to mask.
        self.always_fields = always_fields

    def deadline(self) -> float | None:
        return None

    def flush(self, now: float, force: bool) -> list[Any]:
        return []

    def process(self, batch: list[Record]) -> list[Record]:
        redactor = self.redactor
        text = redactor.text
        always = self.always_fields
        for r in batch:
            message = r.message or ""
            new = text(message)
            changed = new is not message
            escaped = "\\" in message
            extra = r.extra
            if extra is not None and extra.fields is not None:
                if changed or escaped or always:
                    extra.fields = redactor.value(extra.fields)
            elif escaped and message[:1] == "{" and message[-1:] == "}":
                # Escapes (\u0040) could hide a secret from the text's redaction but not
                # from the fields the record's JSON derives from the message.
                try:
                    fields = orjson.loads(message)
                except orjson.JSONDecodeError:
                    fields = None
                if isinstance(fields, dict):
                    extra_of(r).fields = redactor.value(fields)
            if changed:
                r.message = new
                r._json = None
        return batch
