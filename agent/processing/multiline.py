"""Multiline: continuation lines joined into one record, per stream.

Runs after partial-line reassembly (a line is whole, however long) on one container's
batches; each stream has its own pending group, so lines of stdout and stderr are never
joined with each other. A rule is a small state machine, as in Fluent Bit's multiline
parsers: in the ``start`` state a line matching a start rule opens a group (other lines
pass at once, never delayed); in a group, a line matching one of its state's rules joins
it and moves it to that rule's state, and any other line closes it (and is then looked at
afresh). Lines matched by a *tentative* rule (the blank line between two chained Python
tracebacks, or before Node's ``Node.js vX`` footer) join only once a later line confirms
them; otherwise the group closes without them and they are looked at afresh.

A group is emitted when a line closes it, when it reaches ``max_lines`` or ``max_bytes``
(the event goes on in the next record), when no line came for ``flush_timeout_seconds``
(``flush``), and when the container's output ends or the agent stops (``flush(force)``).
The joined record has the first line's timestamp, the messages joined with ``\\n``, is
``truncated`` when any line was, says how many lines it holds (``lines``), and accounts
for all of them in the delivered positions (``Record.extra.end``: its last line's stamp).
A group of one line is emitted as the line's own record.

Presets (``PRESETS``): ``java`` (a line with ``…Exception:``, ``…Error:``, ``Throwable``
or ``Exception in thread``, then indented lines such as ``\\tat …``, ``Caused by: …``,
``... N more``, ``Suppressed: …``), ``python`` (``Traceback (most recent call last):``,
an exception group's ``+ Exception Group Traceback``, or a ``File "…", line N`` line
(``SyntaxError`` at start-up has no header), indented lines, the exception line, and
chained tracebacks after ``During handling of the above exception…`` / ``The above
exception was the direct cause…``), ``go`` (``panic:``, ``fatal error:``, ``goroutine N
[…]:``, ``SIGSEGV:`` …, then goroutine dumps: blank lines, function lines, tab-indented
file lines, ``created by``, ``[signal …``, ``exit status N``), ``node`` (an
``Error``/``…Error:`` line with ``    at …`` frames, indented properties and ``[cause]``,
or an uncaught exception's ``file.js:N`` header, code line and caret, then the error,
its frames and the ``Node.js vN`` footer).
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from agent.processing.config import MultilineConfig
from agent.processing.span import end_of_all
from agent.record import Extra, Record
from agent.speedups import speedups

# The C test of a batch (agent/_speedups.c ``find_any``), when built: whether a message
# holds one of some texts; None when a message is not ASCII.
_find_any: Callable[[list[Record], tuple[str, ...], bool], bool | None] | None = (
    speedups.find_any if speedups is not None else None
)

# A rule: (test of the line's text, next state, tentative).
Rule = tuple[Callable[[str], Any], str, bool]

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def _m(pattern: str) -> Callable[[str], Any]:
    return re.compile(pattern).match


def _s(pattern: str) -> Callable[[str], Any]:
    return re.compile(pattern).search


class Rules:
    """A multiline rule as a state machine (see the module docstring)."""

    def __init__(
        self,
        start: list[Rule],
        states: dict[str, list[Rule]],
        quick: Callable[[str], bool] | None = None,
        sweep: Callable[[str], bool] | None = None,
        needles: tuple[str, ...] = (),
    ) -> None:
        self.start = start
        self.states = states
        self.quick = quick  # a cheap test a start line must pass before the rules run
        # ``quick`` for a whole batch: given its messages joined with "\n", with "\n"
        # before the first and after the last, False only when no line passes ``quick``.
        self.sweep = sweep
        # Texts without "\n" such that ``sweep`` passes exactly when a message holds one
        # (then a C test looks at the messages without joining them); () when unknown.
        self.needles = needles

    def begin(self, text: str) -> str | None:
        """The state a group opened by this line is in; None: the line stands alone."""
        quick = self.quick
        if quick is not None and not quick(text):
            return None
        for test, state, _ in self.start:
            if test(text):
                return state
        return None

    def cont(self, state: str, text: str) -> tuple[str, bool] | None:
        """(next state, tentative) when the line continues a group in ``state``."""
        for test, nxt, tentative in self.states.get(state, ()):
            if test(text):
                return nxt, tentative
        return None


_JAVA_START = _s(r"(?:Exception|Error|Throwable)(?::|$)|^Exception in thread ")
_JAVA_CONT: list[Rule] = [
    (_m(r"[ \t]+\S"), "java", False),  # \tat …, \t... N more, \tSuppressed: …
    (_m(r"Caused by: "), "java", False),
    (_m(r"\.\.\. \d+ (?:more|common frames omitted)"), "java", False),
]

_PY_TRACEBACK = r"Traceback \(most recent call last\):|\s*\+ Exception Group Traceback "
_PY_START: list[Rule] = [
    (_m(_PY_TRACEBACK), "tb", False),
    (_m(r"\s+File \"[^\"]*\", line \d+"), "tb", False),  # SyntaxError: no header
]
_PY_STATES: dict[str, list[Rule]] = {
    "tb": [
        (_m(r"[ \t]"), "tb", False),  # File …, code, carets, exception group's | lines
        (_m(r"[A-Za-z_][\w.]*(?::.*)?$"), "exc", False),  # the exception line
    ],
    "exc": [(_m(r"\s*$"), "exc_blank", True)],
    "exc_blank": [
        (
            _m(
                r"During handling of the above exception, another exception occurred:"
                r"|The above exception was the direct cause of the following exception:"
            ),
            "chain",
            False,
        ),
    ],
    "chain": [(_m(r"\s*$"), "chain", False), (_m(_PY_TRACEBACK), "tb", False)],
}

_GO_FIRST = _m(r"panic: |fatal error: |goroutine \d+ \[|SIG[A-Z]+: |unexpected fault")
_GO_START = ("panic: ", "fatal error: ", "goroutine ", "SIG", "unexpected fault address")
_GO_LINE_START = tuple("\n" + p for p in _GO_START)
_GO_CONT: list[Rule] = [
    (_m(r"\s*$"), "go", True),  # confirmed by the next goroutine (or frame)
    (_m(r"goroutine \d+ \["), "go", False),
    (_m(r"[ \t]"), "go", False),  # \t/path/file.go:12 +0x1d
    (_m(r"created by |panic: |\[signal |\[recovered\]|exit status \d+$|PC=0x"), "go", False),
    (_m(r"\.\.\.\s*(?:\d+|additional) frames elided"), "go", False),
    (_m(r"[a-z0-9]{2,3}\s+0x[0-9a-f]+$"), "go", False),  # register dump
    (_m(r"[\w./*()\[\]{}<>$-]+\(.*\)$"), "go", False),  # main.main(), pkg.(*T).M(0x1, …)
]

_NODE_ERROR = r"\b(?:[A-Z][\w$]*)?(?:Error|Exception)\b(?: \[[\w$]+\])?:|^(?:[A-Z][\w$]*)?Error$"
_NODE_START: list[Rule] = [
    (_s(_NODE_ERROR), "err", False),
    (_m(r"(?:/|[A-Za-z]:\\|file://|node:)\S*:\d+$"), "src", False),  # uncaught: file:line
]
_NODE_STATES: dict[str, list[Rule]] = {
    "src": [(_m(r".*\S"), "code", True)],  # the code line, confirmed by the caret
    "code": [(_m(r"\s*\^+\s*$"), "caret", False)],
    "caret": [(_m(r"\s*$"), "caret", False), (_m(r"\S"), "err", False)],
    "err": [
        (_m(r"\s+at\s|\s+\.\.\. \d+ more|[ \t]+\S|\}\s*$|\(Use `node --trace"), "err", False),
        (_m(r"\s*$"), "blank", True),
    ],
    "blank": [(_m(r"Node\.js v\d"), "end", False), (_m(r"\s*$"), "blank", True)],
    "end": [],
}


_JAVA_NEEDLES = ("Exception", "Error", "Throwable")


def _java_quick(text: str) -> bool:
    return "Exception" in text or "Error" in text or "Throwable" in text  # _JAVA_NEEDLES


def _preset(name: str) -> Rules:
    if name == "java":
        return Rules(
            [(_JAVA_START, "java", False)],
            {"java": _JAVA_CONT},
            quick=_java_quick,
            sweep=_java_quick,  # substrings: found in the joined lines iff in one of them
            needles=_JAVA_NEEDLES,
        )
    if name == "python":
        return Rules(
            _PY_START,
            _PY_STATES,
            quick=lambda t: t[:1] in " \tT",  # (an empty line passes too)
            sweep=lambda j: "\n " in j or "\n\t" in j or "\nT" in j or "\n\n" in j,
        )
    if name == "go":
        return Rules(
            [(_GO_FIRST, "go", False)],
            {"go": _GO_CONT},
            quick=lambda t: t.startswith(_GO_START),
            sweep=lambda j: any(p in j for p in _GO_LINE_START),
        )
    if name == "node":
        return Rules(
            _NODE_START,
            _NODE_STATES,
            quick=lambda t: "Error" in t or "Exception" in t or t[-1:].isdigit(),
        )
    raise ValueError(f"no multiline preset {name!r}")


def rules_for(config: MultilineConfig) -> Rules:
    if config.preset is not None:
        return _preset(config.preset)
    negate = config.negate
    if config.start is not None:
        found = re.compile(config.start).search

        def starts(t: str) -> bool:
            return (found(t) is None) is negate

        def continues(t: str) -> bool:
            return not starts(t)

        return Rules([(starts, "group", False)], {"group": [(continues, "group", False)]})
    assert config.continuation is not None
    cont = re.compile(config.continuation).search

    def continuation(t: str) -> bool:
        return (cont(t) is None) is negate

    return Rules([(lambda t: True, "group", False)], {"group": [(continuation, "group", False)]})


def _text(message: str) -> str:
    """What the rules look at: without a trailing ``\\r`` (CRLF) or ANSI colour codes."""
    if message[-1:] == "\r":
        message = message[:-1]
    if "\x1b" in message:
        message = _ANSI.sub("", message)
    return message


def _size(message: str) -> int:
    return len(message) if message.isascii() else len(message.encode("utf-8", "surrogatepass"))


class _Group:
    __slots__ = ("firm", "records", "since", "size", "state")

    def __init__(self, record: Record, state: str, now: float, size: int) -> None:
        self.records = [record]
        self.firm = 1  # records[firm:] joined by tentative rules, not confirmed yet
        self.state = state
        self.since = now  # when its last line came
        self.size = size


def join(records: list[Record]) -> Record:
    """One record for ``records`` (one stream's lines, in order)."""
    if len(records) == 1:
        return records[0]
    first = records[0]
    out = Record(
        "log",
        first.timestamp,
        first.meta,
        first.stream,
        "\n".join([r.message or "" for r in records]),
        any(r.truncated for r in records),
    )
    extra = out.extra = Extra()
    extra.lines = sum(r.extra.lines if r.extra is not None else 1 for r in records)
    extra.end = end_of_all(records)
    return out


class Multiline:
    """The multiline stage of one container (see the module docstring)."""

    name = "multiline"
    holds = True  # lines wait in groups: the chain must skip lines read again

    def __init__(
        self,
        config: MultilineConfig,
        clock: Callable[[], float] = time.monotonic,
        counters: Counter[str] | None = None,
    ) -> None:
        self.rules = rules_for(config)
        self.counters: Counter[str] = counters if counters is not None else Counter()
        self.max_lines = config.max_lines
        self.max_bytes = config.max_bytes
        self.timeout = config.flush_timeout_seconds
        self.clock = clock
        self.groups: dict[str | None, _Group] = {}
        # The batch test in C: the sweep's texts, a CR and colours (see ``process``).
        self._find = _find_any if self.rules.needles else None
        self._needles = (*self.rules.needles, "\r", "\x1b")

    @property
    def settled(self) -> bool:
        return not self.groups

    def deadline(self) -> float | None:
        if not self.groups:
            return None
        return min(g.since for g in self.groups.values()) + self.timeout

    def process(self, batch: list[Record]) -> list[Record]:
        groups = self.groups
        rules = self.rules
        if not groups and rules.sweep is not None:
            # No event under way: one look at the whole batch; most have no line that
            # could open one (nor a CR or colours, which the rules look through).
            find = self._find
            hit = find(batch, self._needles, False) if find is not None else None
            if hit is None:  # (no C test, or a message that is not ASCII)
                joined = "\n" + "\n".join([r.message or "" for r in batch]) + "\n"
                hit = "\r" in joined or "\x1b" in joined or rules.sweep(joined)
            if not hit:
                return batch
        now = self.clock()
        out: list[Record] = []
        quick = rules.quick
        begin = rules.begin
        append = out.append
        for r in batch:
            if not groups:
                # The common case, no event under way: one cheap test, most lines pass.
                message = r.message or ""
                if (
                    quick is not None
                    and not quick(message)
                    and message[-1:] != "\r"
                    and "\x1b" not in message
                ):
                    append(r)  # (a CR or colours: the rules look at the text without them)
                    continue
                state = begin(_text(message))
                if state is None:
                    append(r)
                else:
                    groups[r.stream] = _Group(r, state, now, _size(message))
                continue
            self._line(r, out, now)
        return out

    def _line(self, r: Record, out: list[Record], now: float) -> None:
        stream = r.stream
        message = r.message or ""
        text = _text(message)
        g = self.groups.get(stream)
        if g is not None:
            step = self.rules.cont(g.state, text)
            if step is not None:
                state, tentative = step
                size = _size(message)
                if not tentative:
                    g.firm = len(g.records) + 1
                if len(g.records) >= self.max_lines or g.size + 1 + size > self.max_bytes:
                    # Full: emit it; the event goes on in a new record.
                    g.firm = len(g.records)
                    self._emit(g, out)
                    self.groups[stream] = _Group(r, state, now, size)
                    return
                g.records.append(r)
                g.size += 1 + size
                g.state = state
                g.since = now
                return
            del self.groups[stream]
            rest = self._emit(g, out)
            if rest:  # unconfirmed lines, looked at afresh; then this line, after them
                for line in rest:
                    self._line(line, out, now)
                self._line(r, out, now)
                return
        opened = self.rules.begin(text)
        if opened is None:
            out.append(r)
        else:
            self.groups[stream] = _Group(r, opened, now, _size(message))

    def _emit(self, g: _Group, out: list[Record]) -> list[Record]:
        """Emits the group's confirmed lines as one record; returns the tentative rest."""
        records = g.records
        firm = records[: g.firm]
        if len(firm) > 1:
            self.counters["multiline_records"] += 1
            self.counters["multiline_lines"] += len(firm)
        out.append(join(firm))
        return records[g.firm :]

    def flush(self, now: float, force: bool) -> list[Record]:
        """Groups whose time is up (every group with ``force``); tentative lines go as
        records of their own."""
        out: list[Record] = []
        for stream, g in list(self.groups.items()):
            if force or now >= g.since + self.timeout:
                del self.groups[stream]
                out += self._emit(g, out)
        return out

    def reset(self) -> None:
        self.groups.clear()
