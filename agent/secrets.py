"""The one masking policy: which configured values are secrets, and how they are hidden
wherever the agent prints or stores configuration or a backend's answer (its own log,
``check-config``, ``/readyz``, dead-letter files).

**Secret unless known harmless.** A header's name says nothing reliable about its value
(``X-Insert-Key``, ``Ocp-Apim-Subscription-Key``, ``X-Honeycomb-Team``, ``X-Session-Id`` all
carry credentials), so every header value is a secret except those of ``HARMLESS_HEADERS``:
``Accept``, ``Accept-Encoding``, ``Content-Type``, ``Content-Encoding``, ``User-Agent`` and
``X-Scope-OrgID`` (a Loki/Mimir tenant name). Likewise every value of a url's query
(``?api_key=``, ``?dd-api-key=``, ``?token=``, …) and a url's password and fragment are
secrets; the query's keys, the user name, host and path are shown.

* ``masked_headers`` and ``masked_url`` print configuration with each secret value replaced
  by ``MASK`` (``check-config``, the config's ``repr``).
* ``Scrubber`` replaces every configured secret value (header values, bearer tokens, basic
  passwords and their base64, url passwords and query values) by ``MASK`` in a text the
  agent did not write: a backend's answer or an error message, before it is logged, shown
  in ``/readyz`` or written to a dead-letter file. A value of 8 characters or more is
  replaced wherever it appears; a shorter one only where it stands alone (not inside a
  longer word or number), so that ``?v=1`` does not turn every ``1`` of an answer into
  ``MASK``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import quote

from yarl import URL

MASK = "**********"
# Header names (lower case) whose values are not secrets: printed and never scrubbed.
HARMLESS_HEADERS = frozenset(
    {
        "accept",
        "accept-encoding",
        "content-type",
        "content-encoding",
        "user-agent",
        "x-scope-orgid",
    }
)
SCRUB_ANYWHERE = 8  # shorter secrets are scrubbed only where they stand alone


def is_secret_header(name: str) -> bool:
    """True unless the header is one of ``HARMLESS_HEADERS`` (any case)."""
    return name.strip().lower() not in HARMLESS_HEADERS


def masked_headers(headers: dict[str, str]) -> dict[str, str]:
    return {k: MASK if is_secret_header(k) and v else v for k, v in headers.items()}


def masked_url(value: str | URL) -> str:
    """The url with its password, every query value and its fragment replaced by
    ``MASK`` (the user, host, path and query keys stay)."""
    url = URL(value) if isinstance(value, str) else value
    if url.password is not None:
        url = url.with_password(MASK)
    text = str(url.with_query(None).with_fragment(None))
    if url.raw_query_string:
        pairs = []
        for pair in url.raw_query_string.split("&"):
            key, eq, val = pair.partition("=")
            pairs.append(f"{key}={MASK}" if eq and val else pair)
        text += "?" + "&".join(pairs)
    if url.raw_fragment:
        text += "#" + MASK
    return text


def url_secrets(value: str) -> list[str]:
    """The secret values of a url as they may appear in a text: its password and each
    query value, decoded and as written (percent-encoded forms)."""
    out: list[str] = []
    url = URL(value)
    if url.password:
        out += [url.password, url.raw_password or ""]
    out += [v for v in url.query.values() if v]
    raw = [url.raw_query_string]
    if "?" in value:  # as written in the config, before yarl's normalisation
        raw.append(value.split("?", 1)[1].split("#", 1)[0])
    for query in raw:
        for pair in query.split("&"):
            val = pair.partition("=")[2]
            if val:
                out += [val, quote(val, safe="")]
    if url.fragment:
        out.append(url.fragment)
    return out


class Scrubber:
    """Replaces every known secret value in a text by ``MASK`` (longest first, so that a
    secret containing another is hidden whole; short ones only where they stand alone)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)
        alternatives = [
            re.escape(s)
            if len(s) >= SCRUB_ANYWHERE
            else rf"(?<![0-9A-Za-z]){re.escape(s)}(?![0-9A-Za-z])"
            for s in self.secrets
        ]
        self._pattern = re.compile("|".join(alternatives)) if alternatives else None

    def __call__(self, text: str) -> str:
        if self._pattern is None:
            return text
        return self._pattern.sub(MASK, text)
