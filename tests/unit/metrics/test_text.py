"""The per-container text written straight from ``FAMILIES`` is byte for byte what
prometheus-client's ``generate_latest`` makes of ``container_families``, in both formats:
label values that need escaping, allowlisted labels that sort before and after the
families' own, numbers Go writes with an exponent, containers without stats; also with a
cache kept over a sequence of scrapes whose rows change, and the C writer's numbers and
lines against the Python ones."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as om_generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

from agent.metrics import text
from agent.metrics.collectors import ContainerRow, ContainersSnapshot, container_families
from agent.metrics.inventory import HEALTH, STATES
from agent.metrics.sample import NetCounters, StatsSample
from agent.metrics.text import TextCache, container_text


class _Families:
    def __init__(self, metrics: list[Any]) -> None:
        self.metrics = metrics

    def collect(self) -> Any:
        return iter(self.metrics)


def reference(snap: ContainersSnapshot, openmetrics: bool) -> str:
    families = _Families(list(container_families(snap)))
    if openmetrics:
        text = om_generate_latest(families).decode()
        assert text.endswith("# EOF\n")
        return text[: -len("# EOF\n")]
    return generate_latest(families).decode()


texts = st.text(st.sampled_from('ab-_.:/"\\\n é0'), max_size=8)
counts = st.one_of(st.integers(0, 10), st.integers(0, 10**15))
numbers = st.one_of(counts, st.floats(allow_nan=False, allow_infinity=False), st.just(-0.0))


@st.composite
def stats(draw: Any) -> StatsSample:
    devices = draw(st.lists(texts, max_size=2, unique=True))
    return StatsSample(
        read_at=0,
        cpu_total_ns=draw(counts),
        cpu_user_ns=draw(counts),
        cpu_system_ns=draw(counts),
        system_cpu_ns=None,
        online_cpus=1,
        memory_usage=draw(counts),
        memory_working_set=draw(counts),
        memory_rss=draw(counts),
        memory_cache=draw(counts),
        memory_limit=draw(counts),
        pids=draw(counts),
        networks={
            name: NetCounters(*draw(st.tuples(*[counts] * 8)))
            for name in draw(st.lists(texts, max_size=2, unique=True))
        },
        io_read_bytes={d: draw(counts) for d in devices},
        io_write_bytes={d: draw(counts) for d in devices},
    )


@st.composite
def rows(draw: Any, n_labels: int) -> ContainerRow:
    s = draw(st.one_of(st.none(), stats()))
    io: tuple[tuple[str, int, int], ...] = ()
    if s is not None:
        io = tuple((d, s.io_read_bytes[d], s.io_write_bytes[d]) for d in sorted(s.io_read_bytes))
    return ContainerRow(
        labels=tuple(draw(texts) for _ in range(3 + n_labels)),
        state=draw(st.sampled_from(STATES)),
        health=draw(st.sampled_from((None, *HEALTH))),
        started_at=draw(st.one_of(st.none(), numbers)),
        restarts=draw(counts),
        exit_code=draw(st.one_of(st.none(), st.integers(-1, 255))),
        oom_events=draw(counts),
        last_seen=draw(numbers),
        log_lines=(draw(counts), draw(counts)),
        log_bytes=(draw(counts), draw(counts)),
        last_log_timestamp=draw(st.sampled_from((None, "2026-12-01T00:00:00.123456789Z"))),
        log_source=draw(st.sampled_from(("", "json-file", "api", 'we"ird'))),
        log_read_failures=draw(counts),
        memory_limit=draw(counts),
        stats=s,
        networks=tuple(s.networks.items()) if s is not None else (),
        io=io,
    )


# allowlisted label names sort among the families' own: before "cpu" and "id", between
# "image" and "interface", after "stream"
ALLOWED = ("container_label_a", "container_label_team", "ima", "zz")


@st.composite
def snapshots(draw: Any) -> ContainersSnapshot:
    allowed = draw(st.lists(st.sampled_from(ALLOWED), max_size=3, unique=True))
    return ContainersSnapshot(
        ("id", "name", "image", *allowed),
        tuple(draw(st.lists(rows(len(allowed)), max_size=5))),
        draw(st.floats(1.7e9, 1.8e9)),
    )


@settings(max_examples=300, deadline=None)
@given(snapshots(), st.booleans())
def test_the_text_is_what_prometheus_client_writes(snap: ContainersSnapshot, om: bool) -> None:
    assert container_text(snap, om) == reference(snap, om)


def running_row(
    labels: tuple[str, ...],
    last_log: str | None,
    log_source: str,
    networks: tuple[tuple[str, NetCounters], ...] = (),
) -> ContainerRow:
    """A running container with stats (2.5 s of CPU, 123,456,789 bytes, 3 pids) and 5 / 6
    lines of 50 / 60 characters on stdout / stderr."""
    s = StatsSample(0, 2_500_000_000, 0, 0, None, 1, 123_456_789, 0, 0, 0, 0, 3)
    return ContainerRow(
        labels, "running", None, 1.7e9, 0, None, 0, 1.7e9, (5, 6), (50, 60),
        last_log, log_source, 0, 0, s, networks, (),
    )  # fmt: skip


def test_a_real_shaped_answer_parses_back() -> None:
    """A plain case read back by prometheus-client's parser, so equal-to-the-reference is
    not equal-but-both-wrong."""
    row = running_row(
        ('/docker/ab"c', "web\n1", "busybox"), None, "json-file", (("lo", NetCounters(rx_bytes=7)),)
    )
    snap = ContainersSnapshot(("id", "name", "image"), (row,), 1.7e9)
    families = {f.name: f for f in text_string_to_metric_families(container_text(snap))}
    cpu = families["container_cpu_usage_seconds"].samples[0]
    assert cpu.value == 2.5 and cpu.labels == {
        "cpu": "total",
        "id": '/docker/ab"c',
        "image": "busybox",
        "name": "web\n1",
    }
    assert families["container_memory_usage_bytes"].samples[0].value == 123_456_789
    assert families["container_network_receive_bytes"].samples[0].labels["interface"] == "lo"
    lines = {s.labels["stream"]: s.value for s in families["container_log_lines"].samples}
    assert lines == {"stdout": 5, "stderr": 6}
    assert "container_last_exit_code" not in families  # never exited: no series
    assert container_text(ContainersSnapshot(("id", "name", "image"), (), 0.0)) == ""


def test_help_texts_are_escaped_as_each_format_wants(monkeypatch: Any) -> None:
    from agent.metrics import collectors
    from agent.metrics.collectors import Family

    odd = (
        Family("odd_total_things", "counter", 'a "quoted"\\ back\nslash', value=lambda r, n: 1),
        Family("odd_gauge", "gauge", 'x"y', "state", values=lambda r, n: (("s", 2.0),)),
    )
    monkeypatch.setattr(collectors, "FAMILIES", odd)
    monkeypatch.setattr(text, "FAMILIES", odd)
    row = ContainerRow(
        ("i", "n", "b"),
        "running",
        None,
        None,
        0,
        None,
        0,
        0.0,
        (0, 0),
        (0, 0),
        None,
        "",
        0,
        0,
        None,
        (),
        (),
    )
    snap = ContainersSnapshot(("id", "name", "image"), (row,), 0.0)
    for om in (False, True):
        assert container_text(snap, om) == reference(snap, om)


# -- the cache: lines kept from one build to the next -----------------------------------------

# fields of a row and how a later scrape may see them changed
CHANGES: dict[str, Any] = {
    "state": st.sampled_from(STATES),
    "health": st.sampled_from((None, *HEALTH)),
    "started_at": st.one_of(st.none(), numbers),
    "restarts": counts,
    "exit_code": st.one_of(st.none(), st.integers(-1, 255)),
    "oom_events": counts,
    "last_seen": numbers,
    "log_lines": st.tuples(counts, counts),
    "log_bytes": st.tuples(counts, counts),
    "last_log_timestamp": st.sampled_from((None, "2026-12-01T00:00:01.000000001Z")),
    "log_source": st.sampled_from(("", "files", "api")),
    "log_read_failures": counts,
    "memory_limit": counts,
}


@st.composite
def later(draw: Any, snap: ContainersSnapshot) -> ContainersSnapshot:
    """The next scrape: some rows gone, some fields of some rows changed (one at a time
    too, so that a family that reads a field its ``reads`` does not name is caught), new
    rows, a new stats sample (or the same one: it is never changed in place)."""
    out = []
    n_labels = len(snap.label_names) - 3
    for row in snap.rows:
        action = draw(st.sampled_from(("keep", "keep", "change", "stats", "drop")))
        if action == "drop":
            continue
        if action == "change":
            fields = draw(st.lists(st.sampled_from(sorted(CHANGES)), min_size=1, max_size=3))
            row = replace(row, **{f: draw(CHANGES[f]) for f in fields})
        elif action == "stats":
            s = draw(st.one_of(st.none(), stats()))
            io: tuple[tuple[str, int, int], ...] = ()
            if s is not None:
                io = tuple(
                    (d, s.io_read_bytes[d], s.io_write_bytes[d]) for d in sorted(s.io_read_bytes)
                )
            nets = tuple(s.networks.items()) if s is not None else ()
            row = replace(row, stats=s, networks=nets, io=io)
        out.append(row)
    out.extend(draw(st.lists(rows(n_labels), max_size=2)))
    draw(st.randoms()).shuffle(out)
    return ContainersSnapshot(snap.label_names, tuple(out), draw(st.floats(1.7e9, 1.8e9)))


@settings(max_examples=150, deadline=None)
@given(st.data(), snapshots(), st.booleans())
def test_a_cache_gives_the_text_of_each_scrape(
    data: Any, snap: ContainersSnapshot, om: bool
) -> None:
    cache = TextCache()
    for _ in range(4):
        assert container_text(snap, om, cache) == reference(snap, om)
        snap = data.draw(later(snap))


def test_a_cache_keeps_lines_while_their_fields_are_the_same() -> None:
    """What the cache is for: a second build from the same values writes only the
    families that depend on the scrape's time (the read lag)."""
    row = running_row(("/docker/x", "web", "busybox"), "2026-12-01T00:00:00.123456789Z", "files")
    cache = TextCache()
    first = container_text(ContainersSnapshot(("id", "name", "image"), (row,), 1.8e9), False, cache)
    (kept,) = cache.containers.values()
    before = list(kept.lines)
    snap = ContainersSnapshot(("id", "name", "image"), (replace(row),), 1.8e9 + 1)
    second = container_text(snap, False, cache)
    assert second == reference(snap, False) != first
    fresh = {spec[0] for spec in cache.fresh}
    assert fresh and all(kept.lines[j] is before[j] for j in range(len(before)) if j not in fresh)


# -- the C writer against the Python one ------------------------------------------------------


def _ext() -> Any:
    from agent.speedups import _load_extension

    ext = _load_extension()
    assert ext is not None, "agent._speedups is not built"
    return ext


any_number = st.one_of(
    st.floats(),
    st.integers(-(10**20), 10**20),
    st.sampled_from((0, 1, -0.0, 1e7, 1234567.0, 9999999.5, 2**63, True, False)),
)
label_texts = st.text(st.sampled_from('ab_=,{}"\\\né\u4e2d\U0001f600 0'), max_size=10)


@settings(max_examples=2000, deadline=None)
@given(any_number)
def test_c_go_float_is_float_to_go_string(value: float) -> None:
    assert _ext().go_float(value) == floatToGoString(value) == text._go_py(value)


@settings(max_examples=500, deadline=None)
@given(
    st.sampled_from(("a_total", "é")),
    label_texts,
    label_texts,
    st.sampled_from(("state", "interface")),
    label_texts,
    st.lists(st.tuples(label_texts, any_number), max_size=70),
)
def test_c_series_lines_are_the_python_ones(
    sample: str, labels: str, left: str, extra: str, right: str, pairs: list[Any]
) -> None:
    ext = _ext()
    for value in [v for _, v in pairs[:3]]:
        assert ext.series_line(sample, labels, value) == text._series_line_py(sample, labels, value)
    want = text._series_lines_py(sample, left, extra, right, pairs)
    assert ext.series_lines(sample, left, extra, right, pairs) == want
    assert ext.series_lines(sample, left, extra, right, tuple(pairs)) == want
