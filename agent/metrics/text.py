"""The per-container part of a /metrics answer, written straight from ``FAMILIES``.

``prometheus_client.generate_latest`` over ``container_families`` gives the same bytes
(the unit tests compare the two on varied snapshots, in both formats), but it makes a
``Sample`` and a label dict for every series and sorts and escapes every label value of
every series: about 0.2 ms a container. Here each container's labels are escaped and
sorted once, and a series is one f-string.

Most of a container's values change seldom: its stats once per stats round, its state
and health at events, its log counters while it prints. A ``TextCache`` (one per
exporter, used by one build at a time) keeps each container's lines of each family with
the row fields they were written from (``Family.reads``), and a later build reuses them
while those fields are the same; the families that depend on the scrape's time (the read
lag) are written every time. The bytes are those of a build without a cache (tested on
sequences of snapshots).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable
from operator import attrgetter, is_
from typing import Any

from prometheus_client.utils import floatToGoString

from agent.metrics.collectors import FAMILIES, ContainerRow, ContainersSnapshot, Family
from agent.speedups import speedups


def _escape(value: str) -> str:
    """A label value as both exposition formats write it."""
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return value


def _help(doc: str, openmetrics: bool) -> str:
    doc = doc.replace("\\", r"\\").replace("\n", r"\n")
    return doc.replace('"', r"\"") if openmetrics else doc


# 0 and 1 are most of the values (the state and health series)
_NUMBERS = {0: "0.0", 1: "1.0"}
_INF = float("inf")


def _go_py(value: float) -> str:
    """``floatToGoString(value)``: its steps without its calls, for finite numbers."""
    text = _NUMBERS.get(value)  # type: ignore[call-overload]
    if text is not None and (value or repr(value)[0] != "-"):  # -0.0 is "-0.0"
        return text
    d = float(value)
    if d != d or d == _INF or d == -_INF:
        return str(floatToGoString(d))
    s = repr(d)
    dot = s.find(".")
    # Go switches to exponents sooner than Python.
    if d > 0 and dot > 6:
        mantissa = f"{s[0]}.{s[1:dot]}{s[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return s


# the C version when the extension is built (the same text: tested against this one)
_go: Callable[[float], str] = speedups.go_float if speedups is not None else _go_py


def _series_line_py(sample: str, labels: str, value: float) -> bytes:
    """One series, its labels written: 'name{labels} value\\n', in UTF-8."""
    return f"{sample}{{{labels}}} {_go(value)}\n".encode()


def _series_lines_py(
    sample: str, left: str, extra: str, right: str, pairs: Iterable[tuple[str, float]]
) -> bytes:
    """The series of a family with a label of its own (``extra``), in UTF-8: its value
    in each pair goes between the container's labels that sort before it and after it."""
    return "".join(
        [
            f'{sample}{{{left}{extra}="{_escape(label)}"{right}}} {_go(value)}\n'
            for label, value in pairs
        ]
    ).encode()


# the C versions when the extension is built (the same bytes: tested against these)
_series_line: Callable[[str, str, float], bytes] = (
    speedups.series_line if speedups is not None else _series_line_py
)
_series_lines: Callable[[str, str, str, str, Iterable[tuple[str, float]]], bytes] = (
    speedups.series_lines if speedups is not None else _series_lines_py
)


def _same(new: tuple[Any, ...], old: tuple[Any, ...] | None) -> bool:
    """Whether fields that were ``old`` and are ``new`` write the same text: the same
    objects (a row copies its container's fields: most are the very objects of the last
    build's row), or equal with zeros of the same sign (0 == 0.0 == -0.0, but Go writes
    "-0.0")."""
    if old is None:
        return False
    if all(map(is_, new, old)):
        return True
    if new != old:
        return False
    # a zero may be 0, 0.0 or -0.0: those equal, str tells them apart (falsy fields alone;
    # what tuples and samples hold are ints)
    return all(a or str(a) == str(b) for a, b in zip(new, old, strict=True))


class _Group:
    """The families that read the same row fields (``Family.reads``)."""

    def __init__(self, reads: tuple[str, ...], specs: list[_Spec]) -> None:
        self.key = attrgetter(*reads) if len(reads) > 1 else _one(attrgetter(reads[0]))
        self.specs = specs


def _one(get: Any) -> Any:
    return lambda row: (get(row),)


class _Container:
    """One container's label texts and its lines per family, with the fields they came
    from per group."""

    __slots__ = ("joined", "keys", "lines", "pieces", "sides")

    def __init__(self, row: ContainerRow, order: list[int], names: tuple[str, ...]) -> None:
        # its labels escaped and sorted: 'id="...",image="...",name="..."'
        self.pieces = [f'{names[i]}="{_escape(row.labels[i])}"' for i in order]
        self.joined = ",".join(self.pieces)
        # a family's extra label goes where it sorts: (left, right) around it, by position
        self.sides: dict[int, tuple[str, str]] = {}
        self.keys: list[tuple[Any, ...] | None] = []
        self.lines: list[bytes] = []  # per family, UTF-8

    def around(self, pos: int) -> tuple[str, str]:
        sides = self.sides.get(pos)
        if sides is None:
            p = self.pieces
            sides = self.sides[pos] = (
                ",".join(p[:pos]) + "," if pos else "",
                "," + ",".join(p[pos:]) if pos < len(p) else "",
            )
        return sides


class TextCache:
    """Containers' lines kept from one build to the next (see the module's doc). Not
    thread-safe: one build at a time. A container not in a build's snapshot is dropped."""

    def __init__(self) -> None:
        self.families: tuple[Family, ...] = ()
        self.label_names: tuple[str, ...] = ()
        self.containers: dict[tuple[str, ...], _Container] = {}
        self.groups: list[_Group] = []
        self.fresh: list[_Spec] = []  # families written at every build
        self.order: list[int] = []

    def _reset(self, families: tuple[Family, ...], names: tuple[str, ...]) -> None:
        self.families, self.label_names = families, names
        self.containers = {}
        self.order = sorted(range(len(names)), key=names.__getitem__)
        sorted_names = [names[i] for i in self.order]
        by_reads: dict[tuple[str, ...], list[_Spec]] = {}
        self.fresh = []
        for j, fam in enumerate(families):
            spec = (
                j,
                fam.value,
                fam.values,
                fam.name + "_total" if fam.kind == "counter" else fam.name,
                bisect_left(sorted_names, fam.extra) if fam.extra else 0,
                fam.extra,
            )
            if fam.reads:
                by_reads.setdefault(fam.reads, []).append(spec)
            else:
                self.fresh.append(spec)
        self.groups = [_Group(reads, specs) for reads, specs in by_reads.items()]

    def lines(self, snap: ContainersSnapshot) -> list[_Container]:
        """Every row's container, its lines brought up to date with the row."""
        if self.families is not FAMILIES or self.label_names != snap.label_names:
            self._reset(FAMILIES, snap.label_names)
        now = snap.taken_at
        old = self.containers
        kept: dict[tuple[str, ...], _Container] = {}
        out = []
        n_families, n_groups = len(self.families), len(self.groups)
        for row in snap.rows:
            c = old.get(row.labels)
            if c is None or row.labels in kept:  # new, or a second row with its labels
                c = _Container(row, self.order, self.label_names)
                c.keys = [None] * n_groups
                c.lines = [b""] * n_families
            kept.setdefault(row.labels, c)
            out.append(c)
            for g, group in enumerate(self.groups):
                key = group.key(row)
                if not _same(key, c.keys[g]):
                    c.keys[g] = key
                    _write(group.specs, row, c, now)
            _write(self.fresh, row, c, now)
        self.containers = kept
        return out


# a family as _write takes it: its index, value and values functions, samples' name, and
# where its extra label sorts among the container's and that label's name
_Spec = tuple[
    int,
    Callable[[ContainerRow, float], float | None] | None,
    Callable[[ContainerRow, float], Iterable[tuple[str, float]]] | None,
    str,
    int,
    str,
]


def _write(specs: list[_Spec], row: ContainerRow, c: _Container, now: float) -> None:
    """A container's lines of these families, written from the row."""
    lines = c.lines
    for j, value, values, sample, pos, extra in specs:
        if values is not None:
            left, right = c.around(pos)
            lines[j] = _series_lines(sample, left, extra, right, values(row, now))
        elif value is not None:
            v = value(row, now)
            lines[j] = b"" if v is None else _series_line(sample, c.joined, v)


def container_parts(
    snap: ContainersSnapshot, openmetrics: bool = False, cache: TextCache | None = None
) -> list[bytes]:
    """The text ``generate_latest`` makes of ``container_families(snap)``, in UTF-8 pieces
    to join (the answer is joined once, with the agent's own families): the text format
    0.0.4, or OpenMetrics' without its closing ``# EOF``. ``cache``: the lines of an
    earlier build to reuse (and keep for the next); without it, all are written."""
    if not snap.rows:
        if cache is not None:
            cache.containers = {}
        return []
    if cache is None:
        cache = TextCache()
    containers = cache.lines(snap)
    out: list[bytes] = []
    # family by family: the containers' lines of each (zip: their lists transposed)
    for fam, column in zip(
        cache.families, zip(*[c.lines for c in containers], strict=True), strict=True
    ):
        if any(column):
            head = fam.name if openmetrics or fam.kind != "counter" else fam.name + "_total"
            out.append(
                f"# HELP {head} {_help(fam.doc, openmetrics)}\n# TYPE {head} {fam.kind}\n".encode()
            )
            out.extend(column)
    return out


def container_text(
    snap: ContainersSnapshot, openmetrics: bool = False, cache: TextCache | None = None
) -> str:
    """``container_parts`` as one str."""
    return b"".join(container_parts(snap, openmetrics, cache)).decode()
