"""``format: elasticsearch``: the ``_bulk`` API (Elasticsearch and OpenSearch).

The body is NDJSON, an action line then a source line per record::

    {"create":{"_index":"container-logs-2026.11.28","_id":"cccccccccccccccco2026-…"}}
    {"@timestamp":"2026-11-28T10:11:45.589604852Z","kind":"log","timestamp":"…",…}

The index is ``elasticsearch.index`` with strftime fields filled from each record's own
timestamp (UTC), so a batch that spans midnight goes to two daily indices. The action is
``create`` by default (the only one data streams accept; it works for plain indices too)
or ``index``; the ``_id`` is deterministic (below) unless ``elasticsearch.id: none``. The
source is the record's JSON (the same fields as the file exporter writes) with
``@timestamp`` first, which data streams require.

The answer is read item by item (``errors``, then each item's ``status``): items with 429
or 5xx are sent again, items with another 4xx are dead-lettered one by one, and items
answered 409 (a version conflict: ``create`` of an id that exists) were already stored and
count as delivered (``read_bulk``).

**Deterministic ids** (``elasticsearch.id: deterministic``, the default). The agent delivers
at least once: a request that timed out after the backend stored it is sent again, and
after a crash the records after the last checkpoint are read and sent again. With an
``_id`` that a record always gets, whoever sends it and how often, ``create`` makes a
second copy a 409 (a no-op, counted as delivered and in ``already_stored_records``) and
``index`` overwrites it with the same document: each line once in the index. The id is::

    <16 hex digits of the container id><o|e|v|s><timestamp><crc32 of the message>[.<n>]
    cccccccccccccccco2026-11-28T10:11:45.589604852Z635b8f42

the stream's letter (stdout, stderr; ``v`` events and ``s`` stats, whose "message" is the
record's JSON), the stamp in the engine's form (nine digits, UTC: the json-file and the
API forms of one stamp give one id) and ``n``, the occurrence: how many earlier lines of
that stream carried the same stamp and the same message (left out when 0). Ids that share
a prefix and grow with time are also the cheap kind for Lucene to look up.

The occurrence is what a record does not carry: its position among the lines sharing its
stamp since the start of the log. The encoder counts it from the lines it has seen since
the agent started (across batches; committed once a send is delivered, so that a batch the
pipeline sends again gets the same ids). Two lines of one stream with the same nanosecond
stamp *and* the same message (rare: the engine stamps lines in nanoseconds) get different
ids when the agent sees both in one run; if the agent restarts between the two, the second
is counted from 0 again and takes the first one's id: with ``create`` it is then taken for
already stored (the index keeps one copy of the identical line, not two). Messages that
differ but share a stamp are told apart by their crc32 (a clash needs the same container,
stream, nanosecond and crc32). ``id: none`` lets the backend generate ids: a little less
work for the agent and for the backend, and duplicates after retries and replays.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import orjson

from agent.record import Record, format_timestamp_ns
from exporters.http.formats import Encoded, ts_seconds_ns, ts_to_ns

_dumps = orjson.dumps
_crc32 = zlib.crc32
_STREAM_LETTER = {"stdout": "o", "stderr": "e", "event": "v", "stats": "s"}
_MAX_STREAMS = 20_000  # (container, stream) occurrence counts kept; more: forget them all

# (container id, stream or kind) -> [stamp, content, count, {content: count} | None,
# id_prefix]: the lines of that stream seen under its latest stamp: one message ``count``
# times, or (several messages) counted by message.
Occurrences = dict[tuple[str, str], list[Any]]


def id_prefix(container_id: str, stream: str) -> bytes:
    """The start of the ids of one container's stream: 16 hex digits of the container id
    and a letter for the stream (``o``, ``e``; ``v`` events, ``s`` stats)."""
    return (container_id[:16] + _STREAM_LETTER.get(stream, stream[:1])).encode()


def canonical(ts: str) -> str:
    """A stamp in the engine's form (UTC, nine digits): the same instant, the same text."""
    return format_timestamp_ns(ts_to_ns(ts))


class ElasticsearchEncoder:
    content_type: ClassVar[str] = "application/x-ndjson"
    default_path: ClassVar[str] = "/_bulk"

    def __init__(
        self,
        index: str = "container-logs-%Y.%m.%d",
        action: str = "create",
        id: str = "none",
    ) -> None:
        self.index = index
        self.action = action
        self.ids = id == "deterministic"
        self._dated = "%" in index
        self._static = self._line(index) if not self._dated else b""
        self._by_second: dict[str, bytes] = {}
        self._seen: Occurrences = {}  # as of the last delivered batch
        self._id_heads: dict[str, bytes] = {}  # "YYYY-MM-DDTHH:MM:SS" -> action up to _id

    def _line(self, index: str) -> bytes:
        return _dumps({self.action: {"_index": index}}) + b"\n"

    def action_line(self, timestamp: str) -> bytes:
        """The action line of a record stamped ``timestamp`` (its index from the pattern)."""
        if not self._dated:
            return self._static
        head = timestamp[:19]
        line = self._by_second.get(head)
        if line is None:
            sec, _ = ts_seconds_ns(timestamp)
            line = self._line(time.strftime(self.index, time.gmtime(sec)))
            if len(self._by_second) > 4096:
                self._by_second.clear()
            self._by_second[head] = line
        return line

    def encode(self, records: Sequence[Record]) -> Encoded:
        if self.ids:
            return self._encode_with_ids(records)
        parts = []
        action_line = self.action_line
        for rec in records:
            ts = rec.timestamp
            # '{"@timestamp":"…",' + the record's JSON without its opening brace.
            source = b'{"@timestamp":"' + ts.encode() + b'",' + rec.json()[1:]
            parts.append(action_line(ts) + source)
        return Encoded(records, parts)

    def _encode_with_ids(self, records: Sequence[Record]) -> Encoded:
        """``encode`` with an ``_id`` in each action line (see the module's docstring).

        Per record: the occurrence count of its stream (the previous record's stream
        state is reused without a lookup, the usual case in a reader's batch), a crc32
        and one bytes formatting."""
        parts: list[bytes] = []
        append = parts.append
        heads = self._id_heads
        seen = self._seen
        pending: Occurrences = {}  # this batch's counts, committed once it is delivered
        last_meta: object = None
        last_stream = ""
        state: list[Any] = []
        for rec in records:
            ts = rec.timestamp
            message = rec.message
            content = rec.json() if message is None else message.encode("utf-8", "surrogatepass")
            meta = rec.meta
            stream = rec.stream or rec.kind
            if meta is not last_meta or stream != last_stream:
                key = (meta.id, stream)
                found = pending.get(key)
                if found is None:
                    before = seen.get(key)
                    if before is None:
                        found = ["", b"", 0, None, id_prefix(meta.id, stream)]
                    else:
                        found = list(before)
                        if before[3] is not None:
                            found[3] = dict(before[3])
                    pending[key] = found
                state, last_meta, last_stream = found, meta, stream
            if state[0] != ts:  # a new stamp: the usual case
                state[0], state[1], state[2], state[3] = ts, content, 1, None
                n = 0
            elif state[3] is None and state[1] == content:  # the same line again
                n = state[2]
                state[2] = n + 1
            else:  # several lines under one stamp: count each message
                counts = state[3]
                if counts is None:
                    counts = state[3] = {state[1]: state[2]}
                n = counts.get(content, 0)
                counts[content] = n + 1
            head = heads.get(ts[:19])
            if head is None:  # '{"create":{"_index":"…","_id":"'
                if len(heads) > 4096:
                    heads.clear()
                head = heads[ts[:19]] = self.action_line(ts)[:-3] + b',"_id":"'
            stamp = ts.encode()
            append(
                b'%s%s%s%08x%s"}}\n{"@timestamp":"%s",%s'
                % (
                    head,
                    state[4],
                    stamp if len(ts) == 30 and ts[29] == "Z" else canonical(ts).encode(),
                    _crc32(content),
                    b".%d" % n if n else b"",
                    stamp,
                    rec.json()[1:],
                )
            )
        encoded = Encoded(records, parts)
        encoded.on_delivered = lambda: self._commit(pending)
        return encoded

    def _commit(self, pending: Occurrences) -> None:
        """The batch was delivered: the next one continues its occurrence counts."""
        if len(self._seen) + len(pending) > _MAX_STREAMS:
            self._seen.clear()  # long-gone containers; at worst a count restarts
        self._seen.update(pending)

    def assemble(self, encoded: Encoded, indices: Sequence[int]) -> bytes:
        return encoded.lines(indices)


@dataclass
class BulkAnswer:
    """A ``_bulk`` answer read item by item (indices of the request's records)."""

    again: list[int] = field(default_factory=list)  # 429, 5xx: to send again
    dead: list[tuple[int, int, str]] = field(default_factory=list)  # (index, status, error)
    present: list[int] = field(default_factory=list)  # 409: the id exists, already stored


def read_bulk(body: bytes, indices: Sequence[int]) -> BulkAnswer | None:
    """Reads a ``_bulk`` answer to a request carrying ``indices`` (in that order), or None
    when it cannot be read item by item (then the caller treats the request as a whole).
    Items answered 2xx are stored, and so are those answered 409 (``create`` of an id that
    exists: a record sent again); 429 and 5xx go again; any other status is a rejection."""
    try:
        answer: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(answer, dict):
        return None
    if answer.get("errors") is False:
        return BulkAnswer()
    items = answer.get("items")
    if not isinstance(items, list) or len(items) != len(indices):
        return None
    out = BulkAnswer()
    for i, item in zip(indices, items, strict=True):
        result = next(iter(item.values()), None) if isinstance(item, dict) and item else None
        if not isinstance(result, dict):
            return None
        status = result.get("status")
        if not isinstance(status, int):
            return None
        if 200 <= status < 300:
            continue
        if status == 409:
            out.present.append(i)
        elif status == 429 or status >= 500:
            out.again.append(i)
        else:
            error = result.get("error")
            text = _dumps(error).decode() if error is not None else ""
            out.dead.append((i, status, text))
    return out


def bulk_outcome(
    body: bytes, indices: Sequence[int]
) -> tuple[list[int], list[tuple[int, int, str]]] | None:
    """``read_bulk`` as (indices to send again, [(index, status, error) to dead-letter])."""
    answer = read_bulk(body, indices)
    return None if answer is None else (answer.again, answer.dead)
