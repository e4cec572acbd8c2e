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
from collections.abc import Callable, Iterable
from typing import Any

import orjson

from agent.processing.config import CustomRedaction
from agent.processing.span import extra_of
from agent.record import Record
from agent.secrets import MASK
from agent.speedups import speedups

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


# The aws gate: one of the key ids' prefixes (one scan, where five substring tests took
# six times as long).
_AWS_PREFIX = re.compile(r"A(?:KIA|SIA|BIA|CCA|3T)").search
# The card gate: digits become "9", spaces and dashes go, anything else becomes ".": a
# card number leaves 13 nines in a row. A bytes translate and a substring search, where
# the card regex itself costs microseconds on every line with a number in it.
_CARD_TABLE = bytes(57 if 48 <= b <= 57 else 46 for b in range(256))
_CARD_RUN = b"9" * 13

PRESETS = ("bearer", "url_password", "aws", "jwt", "card", "email")  # in the order applied
_SUBS: dict[str, Callable[[str], tuple[str, int]]] = {
    "bearer": _bearer,
    "url_password": _url_password,
    "aws": _aws,
    "jwt": _jwt,
    "card": _card,
    "email": _email,
}


# The C batch gate (agent/_speedups.c ``redact_gate``), when built: the presets' cheap
# tests on a batch's messages in one pass, without joining them, as these bits (None when
# a message is not ASCII: then the tests below look at the joined messages).
_GATE_BITS = {
    "bearer": 1,
    "url_password": 2,
    "aws": 4,
    "jwt": 8,
    "card": 16,
    "email": 32,
}
_GATE_ESCAPED = 64
_redact_gate: Callable[[list[Record]], int | None] | None = (
    speedups.redact_gate if speedups is not None else None
)


def _custom(c: CustomRedaction) -> Callable[[str], tuple[str, int]]:
    pattern = re.compile(c.pattern)
    replacement = c.replacement
    return lambda text: pattern.subn(replacement, text)


class Redactor:
    """Masks secrets in a text, counting per redaction. Each preset runs only when a cheap
    test of the text says it may find something (most lines: none does)."""

    def __init__(
        self,
        names: Iterable[str],
        custom: dict[str, CustomRedaction] | None = None,
        counters: Counter[str] | None = None,
    ) -> None:
        custom = custom or {}
        names = list(names)
        self.counters: Counter[str] = counters if counters is not None else Counter()
        self.presets = tuple(p for p in PRESETS if p in names)  # in the order applied
        self.custom = [(name, _custom(custom[name])) for name in names if name in custom]

    def candidates(self, text: str, presets: tuple[str, ...] | None = None) -> tuple[str, ...]:
        """The presets (configured ones, else ``presets``) whose cheap test passes on
        ``text``, in the order applied. Each test looks for what its preset's patterns
        cannot match without, and a mask holds none of it; and as it looks for a
        substring, on lines joined with ``\\n`` it passes when it passes on one of them:
        a batch whose joined messages leave none has nothing a preset could mask."""
        if presets is None:
            presets = self.presets
        if not presets:
            return ()
        out: list[str] = []
        low = text.lower() if "bearer" in presets or "aws" in presets else ""
        for name in presets:
            if name == "bearer":
                hit = "bearer" in low or "authorization" in low
            elif name == "url_password":
                hit = "@" in text and "://" in text  # (a one-character test is the fastest)
            elif name == "aws":
                hit = "secret" in low or _AWS_PREFIX(text) is not None
            elif name == "jwt":
                hit = "J" in text and "eyJ" in text
            elif name == "card":
                hit = _CARD_RUN in text.encode("utf-8", "surrogatepass").translate(
                    _CARD_TABLE, b" -"
                )
            else:  # email
                hit = "@" in text
            if hit:
                out.append(name)
        return tuple(out)

    def text(self, text: str, presets: tuple[str, ...] | None = None) -> str:
        """``text`` with every secret masked; ``presets``: only these of the configured
        ones may match (``candidates`` of a batch holding the text), else all of them."""
        for name in self.candidates(text, presets):
            new, n = _SUBS[name](text)
            if n:
                self.counters["redacted." + name] += n
                text = new
        for name, sub in self.custom:
            new, n = sub(text)
            if n:
                self.counters["redacted." + name] += n
                text = new
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
        self._gate = _redact_gate

    def deadline(self) -> float | None:
        return None

    def flush(self, now: float, force: bool) -> list[Any]:
        return []

    def process(self, batch: list[Record]) -> list[Record]:
        redactor = self.redactor
        # One look at the whole batch first: which presets may find something in any of
        # its messages, and whether any has escapes. Most batches: none, nothing to do.
        bits = self._gate(batch) if self._gate is not None else None
        if bits is None:
            joined = "\n".join([r.message or "" for r in batch])
            presets = redactor.candidates(joined)
            any_escaped = "\\" in joined
        else:
            presets = tuple(p for p in redactor.presets if bits & _GATE_BITS[p])
            any_escaped = bool(bits & _GATE_ESCAPED)
        always = self.always_fields
        if not presets and not any_escaped and not always and not redactor.custom:
            return batch
        text = redactor.text
        for r in batch:
            message = r.message or ""
            new = text(message, presets)
            changed = new is not message
            escaped = any_escaped and "\\" in message
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
