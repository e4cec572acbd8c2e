"""Scrapes from snapshots: the copy taken on the loop is all the build thread reads, it
stays what it was when the state moves on, and a build in a thread while the loop changes
the inventory and the counters raises nothing. Also: exported, dead-lettered and failed
counts that tell the truth."""

from __future__ import annotations

import asyncio
import random
import sys
import zlib
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agent.metrics.collectors import (
    AgentCollector,
    ContainerCollector,
    agent_families,
    container_families,
)
from agent.metrics.inventory import Inventory
from agent.metrics.sample import NetCounters, StatsSample
from agent.record import ContainerMeta, Record, timestamp_to_unix
from agent.tap import TapHub

SEED = 20261201


class _Families:
    def __init__(self, metrics: list[Any]) -> None:
        self.metrics = metrics

    def collect(self) -> Any:
        return iter(self.metrics)


def render(metrics: Any) -> str:
    return generate_latest(_Families(list(metrics))).decode()  # type: ignore[arg-type]


def parsed(text: str) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append(s)
    return out


def sample(cpu_s: float, iface: str = "eth0", dev: str = "8:0") -> StatsSample:
    return StatsSample(
        read_at=0,
        cpu_total_ns=int(cpu_s * 1e9),
        cpu_user_ns=0,
        cpu_system_ns=0,
        system_cpu_ns=None,
        online_cpus=1,
        memory_usage=100,
        memory_working_set=50,
        memory_rss=30,
        memory_cache=20,
        memory_limit=0,
        pids=1,
        networks={iface: NetCounters(rx_bytes=7)},
        io_read_bytes={dev: 11},
        io_write_bytes={dev: 13},
    )


class _Stats:
    cgroup = None
    errors = 0
    last_round_seconds = 0.25


class _State:
    def __init__(self, inventory: Inventory, runners: Sequence[Any] = ()) -> None:
        self.inventory = inventory
        self.stats = _Stats()

        class Pipe:
            pass

        class Disc:
            reconnects = 2
            events_seen = 9
            connected = asyncio.Event()

        class Fol:
            followed = 3
            unavailable = 0
            lines_lost = 0
            processing = None

        self.reloader = None
        self.tap = TapHub()
        self.pipeline = Pipe()
        self.pipeline.runners = list(runners)  # type: ignore[attr-defined]
        self.discovery = Disc()
        self.followers = Fol()


def meta(i: int, **labels: str) -> ContainerMeta:
    return ContainerMeta(f"c{i:04d}", f"/box-{i}", "busybox", {"team": f"t{i}", **labels}, "h")


def test_the_snapshot_keeps_the_values_of_when_it_was_taken() -> None:
    inv = Inventory()
    a = inv.seen_in_listing(meta(1), "running")
    a.stats = sample(1.0)
    a.log_lines["stdout"] = 5
    a.last_log_timestamp = "2026-12-01T00:00:00.000000000Z"
    inv.seen_in_listing(meta(2), "exited").exit_code = 3
    collector = ContainerCollector(_State(inv), ["team"])  # type: ignore[arg-type]
    snap = collector.snapshot()
    before = render(container_families(snap))

    # The state moves on: counters, a new stats sample, a sample's dicts changed in
    # place, labels, a removed and an added container.
    a.log_lines["stdout"] = 500
    a.log_lines["stderr"] = 9
    a.stats.networks["eth1"] = NetCounters(rx_bytes=1)
    a.stats.io_read_bytes["8:16"] = 1
    a.stats = sample(2.0)
    a.state = "paused"
    a.meta = meta(1, team="changed")
    inv.on_event(meta(2), "destroy", {}, 1)
    inv.seen_in_listing(meta(3), "running")

    assert render(container_families(snap)) == before
    got = parsed(before)
    assert {s.labels["name"] for s in got["container_state"]} == {"box-1", "box-2"}
    lines = {
        (s.labels["name"], s.labels["stream"]): s.value for s in got["container_log_lines_total"]
    }
    assert lines == {("box-1", "stdout"): 5, ("box-1", "stderr"): 0} | {
        ("box-2", "stdout"): 0,
        ("box-2", "stderr"): 0,
    }
    assert [s.value for s in got["container_cpu_usage_seconds_total"]] == [1.0]
    assert [s.labels["interface"] for s in got["container_network_receive_bytes_total"]] == ["eth0"]
    assert [s.labels["device"] for s in got["container_fs_reads_bytes_total"]] == ["8:0"]
    assert got["container_cpu_usage_seconds_total"][0].labels["container_label_team"] == "t1"
    running = [s for s in got["container_state"] if s.labels["state"] == "running"]
    assert {s.labels["name"]: s.value for s in running} == {"box-1": 1.0, "box-2": 0.0}
    assert [s.value for s in got["container_last_exit_code"]] == [3]
    # The read lag is measured at the snapshot's time, not at the build's.
    lag = got["container_agent_log_read_lag_seconds"][0].value
    stamp = float(timestamp_to_unix("2026-12-01T00:00:00.000000000Z"))
    assert abs(lag - (snap.taken_at - stamp)) < 1e-3


def test_collect_is_snapshot_then_families() -> None:
    inv = Inventory()
    for i in range(5):
        info = inv.seen_in_listing(meta(i), "running")
        info.stats = sample(i)
        info.log_bytes["stderr"] = i * 10
    collector = ContainerCollector(_State(inv), ["team"])  # type: ignore[arg-type]
    reg = CollectorRegistry()
    reg.register(collector)
    assert generate_latest(reg).decode() == render(container_families(collector.snapshot()))


def _runner(name: str, exporter: Any) -> Any:
    from agent.delivery.runner import ExporterRunner
    from agent.retry import Backoff
    from exporters.file import FileConfig

    cfg = FileConfig(type="file", path="/dev/null")
    return ExporterRunner(exporter, cfg, Backoff(0.001, 0.01))


class _DeadLettering:
    """An exporter that, like the http one, never raises for a refused record: it
    dead-letters the records whose message says "bad", drops those that say "lost" (its
    dead-letter file at its cap) and counts its failed requests."""

    name = "http"
    accepts_records = True

    def __init__(self, fail_first: int = 0) -> None:
        self.dead_lettered_records = 0
        self.dead_letter_dropped_records = 0
        self.failures = 0
        self.requests = 0
        self.fail_first = fail_first
        self.raised = 0

    async def send(self, batch: Sequence[Record]) -> None:
        if self.raised < self.fail_first:
            self.raised += 1
            raise ConnectionError("backend down")
        self.requests += 2
        self.failures += 1  # one request failed and was retried inside send
        self.dead_lettered_records += sum(r.message == "bad" for r in batch)
        self.dead_letter_dropped_records += sum(r.message == "lost" for r in batch)

    def health(self) -> Any:
        from exporters.base import Health

        return Health(True)


def _logs(*messages: str) -> list[Record]:
    m = meta(1)
    return [
        Record.log(f"2026-12-01T00:00:00.{i:09d}Z", m, "stdout", msg, False)
        for i, msg in enumerate(messages)
    ]


async def test_records_refused_for_good_are_not_counted_as_exported() -> None:
    exporter = _DeadLettering(fail_first=2)
    runner = _runner("http", exporter)
    await runner._send(_logs("ok", "bad", "ok", "bad", "bad"))
    await runner._send(_logs("ok", "ok", "lost"))
    assert runner.exported == 4
    assert runner.dead_lettered == 3
    assert runner.dropped == {"dead_letter_full": 1}
    assert runner.failures == 2  # the two sends that raised

    state = _State(Inventory(), [runner])
    got = parsed(render(agent_families(AgentCollector(state).snapshot())))  # type: ignore[arg-type]
    value = {name: [s.value for s in series] for name, series in got.items()}
    assert value["container_agent_records_exported_total"] == [4]
    assert value["container_agent_records_dead_lettered_total"] == [3]
    drops = {s.labels["reason"]: s.value for s in got["container_agent_records_dropped_total"]}
    assert drops == {"dead_letter_full": 1, "queue_full": 0, "shutdown": 0}
    # failures: the pipeline's (sends that raised) plus the exporter's own (2 sends)
    assert value["container_agent_exporter_failures_total"] == [2 + 2]
    assert value["container_agent_exporter_dead_lettered_records_total"] == [3]
    assert value["container_agent_exporter_requests_total"] == [4]


async def test_the_file_exporters_own_counters_are_exported(tmp_path: Any) -> None:
    from exporters.file import FileConfig, FileExporter

    cfg = FileConfig(type="file", path=str(tmp_path / "out.ndjson"), rotate={"max_bytes": 1024})
    exporter = FileExporter("file", cfg)
    await exporter.start()
    runner = _runner("file", exporter)
    for i in range(20):
        await runner._send(_logs(*(f"line {i}.{k} " + "x" * 40 for k in range(5))))
    await exporter.close()
    assert exporter.rotations > 0

    state = _State(Inventory(), [runner])
    got = parsed(render(agent_families(AgentCollector(state).snapshot())))  # type: ignore[arg-type]
    value = {name: [s.value for s in series] for name, series in got.items()}
    assert value["container_agent_exporter_file_rotations_total"] == [exporter.rotations]
    assert value["container_agent_exporter_duplicates_skipped_records_total"] == [0]
    assert value["container_agent_exporter_slow_loop_writes_total"] == [0]
    assert "container_agent_exporter_requests_total" not in value  # the http exporter's


async def test_an_exporter_without_its_own_counters_counts_every_record_exported() -> None:
    class Plain:
        name = "file"

        async def send(self, batch: Sequence[Record]) -> None:
            return None

        def health(self) -> Any:
            from exporters.base import Health

            return Health(True)

    runner = _runner("file", Plain())
    await runner._send(_logs("a", "b", "c"))
    assert (runner.exported, runner.dead_lettered, runner.failures) == (3, 0, 0)
    got = parsed(render(agent_families(AgentCollector(_State(Inventory(), [runner])).snapshot())))  # type: ignore[arg-type]
    assert [s.value for s in got["container_agent_exporter_failures_total"]] == [0]
    assert "container_agent_exporter_requests_total" not in got


async def test_building_in_a_thread_while_the_loop_changes_the_state_raises_nothing() -> None:
    """Stress: the loop keeps adding, removing and updating containers, stats samples and
    runner counters (new drop reasons included) while a thread builds scrape after scrape
    from snapshots; every build sees a consistent state."""
    rng = random.Random(SEED)
    inv = Inventory()
    for i in range(300):
        info = inv.seen_in_listing(meta(i), "running")
        info.stats = sample(i)
    exporter = _DeadLettering()
    runner = _runner("http", exporter)
    state = _State(inv, [runner])
    containers = ContainerCollector(state, ["team", "tier"])  # type: ignore[arg-type]
    agent = AgentCollector(state)  # type: ignore[arg-type]
    stop = asyncio.Event()
    changes = 0

    async def mutate() -> None:
        nonlocal changes
        n = 300
        while not stop.is_set():
            for _ in range(50):
                live = list(inv.containers.values())
                info = rng.choice(live)
                what = rng.randrange(7)
                if what == 0:
                    inv.seen_in_listing(meta(n, tier=str(n)), "running").stats = sample(n)
                    n += 1
                elif what == 1 and len(live) > 50:
                    inv.on_event(info.meta, "destroy", {}, 1)
                elif what == 2:
                    info.log_lines[rng.choice(("stdout", "stderr"))] += 1
                    info.log_bytes["stdout"] += 10
                    info.last_log_timestamp = "2026-12-01T00:00:00.5Z"
                elif what == 3:
                    info.stats = sample(rng.random(), f"eth{rng.randrange(3)}")
                elif what == 4 and info.stats is not None:
                    info.stats.networks[f"veth{n}"] = NetCounters()  # in place, on purpose
                    info.stats.io_write_bytes[f"8:{n}"] = 1
                    n += 1
                elif what == 5:
                    inv.on_event(info.meta, rng.choice(("die", "start", "oom", "pause")), {}, 1)
                else:
                    runner.dropped[f"reason_{rng.randrange(1000)}"] += 1
                    runner.received += 1
                changes += 1
            await asyncio.sleep(0)

    def build(snaps: tuple[Any, Any]) -> tuple[int, int]:
        got = parsed(render([*container_families(snaps[0]), *agent_families(snaps[1])]))
        names = {s.labels["name"] for s in got["container_state"]}
        # every container of the snapshot has its 7 state series, and only those, and is
        # in exactly one state and one health status
        assert len(got["container_state"]) == 7 * len(names) == 7 * len(snaps[0].rows)
        for family in ("container_state", "container_health_status"):
            ones = Counter(s.labels["name"] for s in got[family] if s.value == 1)
            assert set(ones) == names and set(ones.values()) == {1}, family
        drops = got["container_agent_records_dropped_total"]
        assert len(drops) == len(snaps[1].exporters[0].dropped)
        return len(names), len(drops)

    loop = asyncio.get_running_loop()
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # interleave the two threads as finely as possible
    task = asyncio.create_task(mutate())
    try:
        with ThreadPoolExecutor(1) as pool:
            seen = set()
            deadline = loop.time() + 3
            builds = 0
            while loop.time() < deadline or builds < 5:
                snaps = (containers.snapshot(), agent.snapshot())
                seen.add(await loop.run_in_executor(pool, build, snaps))
                builds += 1
    finally:
        sys.setswitchinterval(switch)
        stop.set()
        await task
    assert changes > 1000, changes
    assert len(seen) > 1, "the state did not change between builds"
    assert isinstance(runner.dropped, Counter)


def test_reloads_config_hash_tap_drops_unavailable_and_processing_counters() -> None:
    from collections import Counter
    from types import SimpleNamespace

    from agent.processing.build import Processing
    from agent.processing.config import ProcessingConfig

    state = _State(Inventory())
    state.reloader = SimpleNamespace(results={"ok": 3, "failed": 1}, hash="0123456789ab")
    state.tap.dropped = 17
    state.followers.unavailable = 2
    state.followers.lines_lost = 40
    first = Processing(ProcessingConfig())
    first.counters["c1"] = Counter(
        {"parsed": 5, "unparsed": 1, "redacted.bearer": 4, "rate_limit_delay_ms": 1500}
    )
    first.invalid_labels = 1
    # a reload makes a new Processing: the counters go on from where they were
    state.followers.processing = Processing(ProcessingConfig(), previous=first)
    state.followers.processing.counters["c2"] = Counter({"filtered": 7, "parsed": 1})
    got = parsed(render(agent_families(AgentCollector(state).snapshot())))  # type: ignore[arg-type]

    def values(name: str) -> dict[tuple[str, ...], float]:
        return {tuple(s.labels.values()): s.value for s in got[name]}

    assert values("container_agent_config_reloads_total") == {("failed",): 1, ("ok",): 3}
    assert values("container_agent_config_info") == {("0123456789ab",): 1}
    assert values("container_agent_tap_dropped_total") == {(): 17}
    assert values("container_agent_containers_unavailable_total") == {(): 2}
    assert values("container_agent_log_lines_lost_total") == {(): 40}
    assert values("container_agent_processing_parser_lines_total") == {
        ("parsed",): 6,
        ("unparsed",): 1,
    }
    assert values("container_agent_processing_filtered_lines_total") == {(): 7}
    assert values("container_agent_processing_redactions_total") == {("bearer",): 4}
    assert values("container_agent_processing_rate_limit_delay_seconds_total") == {(): 1.5}
    assert values("container_agent_processing_invalid_labels_total") == {(): 1}


def test_processing_counters_never_go_back_when_containers_are_forgotten() -> None:
    from collections import Counter

    from agent.processing.build import Processing
    from agent.processing.config import ProcessingConfig

    proc = Processing(ProcessingConfig())
    proc.CACHE = 2  # settings (and counters) kept for two containers
    for i in range(5):
        proc.settings(meta(i))
        proc.counters.setdefault(meta(i).id, Counter())["parsed"] += 1
    assert len(proc.counters) <= 2
    assert proc.totals()["parsed"] == 5


def test_which_accept_encodings_take_gzip() -> None:
    from exporters.prometheus.exposition import gzip_body, pieces, wants_gzip

    for header in ("gzip", "gzip, deflate", "deflate, gzip;q=0.5", "*", "GZIP", "x-gzip"):
        assert wants_gzip(header), header
    for header in ("", "identity", "deflate", "gzip;q=0", "gzip;q=0.0", "br, gzip;q=bad"):
        assert not wants_gzip(header), header
    line = b'container_state{id="/docker/x"} 1.0\n'
    body = pieces([line] * 10_000)
    assert zlib.decompress(gzip_body(body).join(), 31) == line * 10_000
