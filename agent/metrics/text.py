"""The per-container part of a /metrics answer, written straight from ``FAMILIES``.

``prometheus_client.generate_latest`` over ``container_families`` gives the same bytes
(the unit tests compare the two on varied snapshots, in both formats), but it makes a
``Sample`` and a label dict for every series and sorts and escapes every label value of
every series: about 0.2 ms a container. Here each container's labels are escaped and
sorted once per scrape, and a series is one f-string.
"""

from __future__ import annotations

from bisect import bisect_left

from prometheus_client.utils import floatToGoString

from agent.metrics.collectors import FAMILIES, ContainersSnapshot


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


def _go(value: float) -> str:
    text = _NUMBERS.get(value)  # type: ignore[call-overload]
    if text is None or (not value and repr(value)[0] == "-"):  # -0.0 is "-0.0"
        return str(floatToGoString(value))
    return text


def container_text(snap: ContainersSnapshot, openmetrics: bool = False) -> str:
    """The text ``generate_latest`` makes of ``container_families(snap)``: the text
    format 0.0.4, or OpenMetrics' without its closing ``# EOF``."""
    if not snap.rows:
        return ""
    names = snap.label_names
    order = sorted(range(len(names)), key=names.__getitem__)
    sorted_names = [names[i] for i in order]
    # every row's labels escaped and sorted once: "id=\"...\",image=\"...\",name=\"...\""
    pieces = [[f'{names[i]}="{_escape(row.labels[i])}"' for i in order] for row in snap.rows]
    joined = [",".join(p) for p in pieces]
    # a family's extra label goes where it sorts: (left, right) around it, per position
    around: dict[int, list[tuple[str, str]]] = {}
    now = snap.taken_at
    out: list[str] = []
    for fam in FAMILIES:
        sample = fam.name + "_total" if fam.kind == "counter" else fam.name
        head = sample if not openmetrics else fam.name
        lines: list[str] = []
        add = lines.append
        if fam.values is not None:
            pos = bisect_left(sorted_names, fam.extra)
            sides = around.get(pos)
            if sides is None:
                sides = around[pos] = [
                    (
                        ",".join(p[:pos]) + "," if pos else "",
                        "," + ",".join(p[pos:]) if pos < len(p) else "",
                    )
                    for p in pieces
                ]
            extra = fam.extra
            values = fam.values
            for row, (left, right) in zip(snap.rows, sides, strict=True):
                for label, value in values(row, now):
                    add(f'{sample}{{{left}{extra}="{_escape(label)}"{right}}} {_go(value)}\n')
        elif fam.value is not None:
            value_of = fam.value
            for row, labels in zip(snap.rows, joined, strict=True):
                v = value_of(row, now)
                if v is not None:
                    add(f"{sample}{{{labels}}} {_go(v)}\n")
        if lines:
            out.append(f"# HELP {head} {_help(fam.doc, openmetrics)}\n")
            out.append(f"# TYPE {head} {fam.kind}\n")
            out.extend(lines)
    return "".join(out)
