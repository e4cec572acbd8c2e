"""RFC 3339 stamps as unix seconds and nanoseconds, fast for the engine's own form
(``2026-11-28T10:11:45.589604852Z``): exporters turn every record's stamp into numbers
(Loki and OTLP nanoseconds, Elasticsearch ids, the file exporter's strftime paths)."""

from __future__ import annotations

import calendar
import time

from agent.record import timestamp_to_unix

_SECONDS: dict[str, int] = {}  # "YYYY-MM-DDTHH:MM:SS" -> unix seconds (records share seconds)


def ts_seconds_ns(ts: str) -> tuple[int, int]:
    """An RFC 3339 stamp as (unix seconds, nanoseconds within the second).

    The engine's form (``2026-11-28T10:11:45.589604852Z``, UTC, nine digits) takes a fast
    path with a per-second cache; anything else goes through ``timestamp_to_unix``.
    """
    if len(ts) == 30 and ts[19] == "." and ts[29] == "Z":
        head = ts[:19]
        sec = _SECONDS.get(head)
        if sec is None:
            try:
                sec = calendar.timegm(
                    (
                        int(ts[0:4]),
                        int(ts[5:7]),
                        int(ts[8:10]),
                        int(ts[11:13]),
                        int(ts[14:16]),
                        int(ts[17:19]),
                    )
                )
            except ValueError:
                return _slow(ts)
            if len(_SECONDS) > 4096:
                _SECONDS.clear()
            _SECONDS[head] = sec
        frac = ts[20:29]
        if frac.isdigit():
            return sec, int(frac)
    return _slow(ts)


def _slow(ts: str) -> tuple[int, int]:
    try:
        seconds, frac = timestamp_to_unix(ts).split(".")
        return int(seconds), int(frac)
    except (ValueError, IndexError):  # not a timestamp at all: the time it was seen
        now = time.time_ns()
        return now // 1_000_000_000, now % 1_000_000_000


def ts_to_ns(ts: str) -> int:
    """An RFC 3339 stamp as nanoseconds since the epoch."""
    sec, ns = ts_seconds_ns(ts)
    return sec * 1_000_000_000 + ns


_SECONDS_TEXT: dict[str, str] = {}  # "YYYY-MM-DDTHH:MM:SS" -> "1795824000"


def ts_to_ns_text(ts: str) -> str:
    """``ts_to_ns`` as a decimal string (what Loki and OTLP/JSON take), without integer
    arithmetic on the engine's form: the cached seconds followed by the nine digits."""
    if len(ts) == 30 and ts[29] == "Z":
        head = _SECONDS_TEXT.get(ts[:19])
        frac = ts[20:29]
        if head is not None and frac.isdigit():
            return head + frac
        sec, ns = ts_seconds_ns(ts)
        if sec >= 1_000_000_000 and frac.isdigit():  # 10-digit seconds: fixed width
            if len(_SECONDS_TEXT) > 4096:
                _SECONDS_TEXT.clear()
            _SECONDS_TEXT[ts[:19]] = str(sec)
        return str(sec * 1_000_000_000 + ns)
    return str(ts_to_ns(ts))
