"""The per-container text written straight from ``FAMILIES`` is byte for byte what
prometheus-client's ``generate_latest`` makes of ``container_families``, in both formats:
label values that need escaping, allowlisted labels that sort before and after the
families' own, numbers Go writes with an exponent, containers without stats."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as om_generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agent.metrics.collectors import ContainerRow, ContainersSnapshot, container_families
from agent.metrics.inventory import HEALTH, STATES
from agent.metrics.sample import NetCounters, StatsSample
from agent.metrics.text import container_text


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


def test_a_real_shaped_answer_parses_back() -> None:
    """A plain case read back by prometheus-client's parser, so equal-to-the-reference is
    not equal-but-both-wrong."""
    s = StatsSample(0, 2_500_000_000, 0, 0, None, 1, 123_456_789, 0, 0, 0, 0, 3)
    row = ContainerRow(
        ('/docker/ab"c', "web\n1", "busybox"),
        "running",
        None,
        1.7e9,
        0,
        None,
        0,
        1.7e9,
        (5, 6),
        (50, 60),
        None,
        "json-file",
        0,
        0,
        s,
        (("lo", NetCounters(rx_bytes=7)),),
        (),
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
    from agent.metrics import collectors, text
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
