"""Stats math on recorded (cgroup v1) and hand-built (cgroup v2) payloads and cgroup trees."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agent.metrics.cgroup import CgroupLayout, _read, _read_int, _read_kv, read_net_dev
from agent.metrics.collectors import ContainerCollector, sanitize_label
from agent.metrics.inventory import Inventory
from agent.metrics.sample import StatsSample, cpu_percent, parse_api_stats
from agent.record import ContainerMeta

DATA = Path(__file__).parents[1] / "data"

# Built from the Engine API documentation's example for a cgroup v2 host (API 1.41+).
V2_PAYLOAD = {
    "read": "2026-11-28T10:00:01.000000000Z",
    "pids_stats": {"current": 3, "limit": 100},
    "blkio_stats": {
        "io_service_bytes_recursive": [
            {"major": 254, "minor": 0, "op": "read", "value": 4096},
            {"major": 254, "minor": 0, "op": "write", "value": 8192},
        ]
    },
    "cpu_stats": {
        "cpu_usage": {
            "total_usage": 2_000_000_000,
            "usage_in_kernelmode": 500_000_000,
            "usage_in_usermode": 1_500_000_000,
        },
        "system_cpu_usage": 100_000_000_000,
        "online_cpus": 4,
    },
    "precpu_stats": {"cpu_usage": {"total_usage": 0}},
    "memory_stats": {
        "usage": 10_000_000,
        "stats": {"anon": 6_000_000, "file": 3_000_000, "inactive_file": 2_500_000},
        "limit": 2_000_000_000,
    },
    "networks": {
        "eth0": {
            "rx_bytes": 100,
            "rx_packets": 2,
            "rx_errors": 0,
            "rx_dropped": 1,
            "tx_bytes": 50,
            "tx_packets": 1,
            "tx_errors": 0,
            "tx_dropped": 0,
        }
    },
}


def test_v1_payload_recorded_from_the_test_engine() -> None:
    payload = json.loads((DATA / "stats_v1.json").read_text())
    s = parse_api_stats(payload, memory_limit=64 * 1024 * 1024)
    mem = payload["memory_stats"]
    assert s.cpu_total_ns == payload["cpu_stats"]["cpu_usage"]["total_usage"]
    assert s.cpu_user_ns == payload["cpu_stats"]["cpu_usage"]["usage_in_usermode"]
    assert s.memory_usage == mem["usage"]
    assert s.memory_working_set == mem["usage"] - mem["stats"]["total_inactive_file"]
    assert s.memory_rss == mem["stats"]["total_rss"]
    assert s.memory_cache == mem["stats"]["total_cache"]
    assert s.online_cpus == 2 and s.pids >= 1
    # docker stats' CPU % from the payload's own precpu, as the CLI computes it
    pre = payload["precpu_stats"]
    expected = (
        (payload["cpu_stats"]["cpu_usage"]["total_usage"] - pre["cpu_usage"]["total_usage"])
        / (payload["cpu_stats"]["system_cpu_usage"] - pre["system_cpu_usage"])
        * 2
        * 100
    )
    prev = parse_api_stats({"cpu_stats": pre, "memory_stats": {}})
    assert cpu_percent(prev, s) == pytest.approx(expected)


def test_v1_blkio_and_working_set_floor() -> None:
    payload = {
        "memory_stats": {"usage": 100, "stats": {"total_inactive_file": 500, "total_rss": 1}},
        "blkio_stats": {
            "io_service_bytes_recursive": [
                {"major": 8, "minor": 0, "op": "Read", "value": 10},
                {"major": 8, "minor": 0, "op": "Write", "value": 20},
                {"major": 8, "minor": 0, "op": "Total", "value": 30},
            ]
        },
    }
    s = parse_api_stats(payload)
    assert s.memory_working_set == 0
    assert s.io_read_bytes == {"8:0": 10} and s.io_write_bytes == {"8:0": 20}


def test_v2_payload() -> None:
    s = parse_api_stats(V2_PAYLOAD)
    assert (s.memory_usage, s.memory_working_set) == (10_000_000, 7_500_000)
    assert (s.memory_rss, s.memory_cache) == (6_000_000, 3_000_000)
    assert s.io_read_bytes == {"254:0": 4096} and s.io_write_bytes == {"254:0": 8192}
    assert s.networks["eth0"].rx_dropped == 1 and s.networks["eth0"].tx_bytes == 50
    assert (s.cpu_user_ns, s.cpu_system_ns, s.online_cpus) == (1_500_000_000, 500_000_000, 4)
    later = parse_api_stats(
        {
            **V2_PAYLOAD,
            "cpu_stats": {
                **V2_PAYLOAD["cpu_stats"],
                "system_cpu_usage": 110_000_000_000,
                "cpu_usage": {"total_usage": 3_000_000_000},
            },
        }
    )
    assert cpu_percent(s, later) == pytest.approx(1e9 / 10e9 * 4 * 100)
    assert cpu_percent(None, later) is None


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v1_tree(tmp_path: Path) -> None:
    cid = "a" * 64
    rel = f"docker/{cid}"
    _write(tmp_path / "cpuacct" / rel / "cpuacct.usage", "3000000000\n")
    _write(tmp_path / "cpuacct" / rel / "cpuacct.stat", "user 250\nsystem 50\n")
    _write(tmp_path / "memory" / rel / "memory.usage_in_bytes", "9000\n")
    _write(
        tmp_path / "memory" / rel / "memory.stat",
        "cache 1\nrss 2\ntotal_cache 4000\ntotal_rss 3000\ntotal_inactive_file 1000\n",
    )
    _write(
        tmp_path / "blkio" / rel / "blkio.throttle.io_service_bytes_recursive",
        "8:0 Read 100\n8:0 Write 200\n8:0 Total 300\nTotal 300\n",
    )
    _write(tmp_path / "pids" / rel / "pids.current", "4\n")
    proc = tmp_path / "proc"
    _write(proc / "stat", "cpu  100 0 100 800 0 0 0 0 0 0\ncpu0 50 0 50 400 0 0 0\ncpu1 1 1 1 1\n")
    _write(
        proc / "42" / "net" / "dev",
        "Inter-|   Receive\n face |bytes packets errs drop fifo frame compressed multicast|\n"
        "  eth0: 1000 10 1 2 0 0 0 0 500 5 0 3 0 0 0 0\n",
    )
    layout = CgroupLayout(tmp_path)
    assert not layout.v2 and layout.find(cid) == rel
    s = layout.read(rel, 0, 42, proc)
    assert s.cpu_total_ns == 3_000_000_000
    assert s.cpu_user_ns == 2_500_000_000 and s.cpu_system_ns == 500_000_000
    assert (s.memory_usage, s.memory_working_set, s.memory_rss, s.memory_cache) == (
        9000,
        8000,
        3000,
        4000,
    )
    assert s.io_read_bytes == {"8:0": 100} and s.io_write_bytes == {"8:0": 200}
    assert s.pids == 4 and s.online_cpus == 2
    assert s.system_cpu_ns == 1000 * 10_000_000
    assert s.networks["eth0"].rx_errors == 1 and s.networks["eth0"].tx_dropped == 3


def test_cgroup_v2_tree_systemd_layout(tmp_path: Path) -> None:
    cid = "b" * 64
    _write(tmp_path / "cgroup.controllers", "cpu io memory pids\n")
    base = tmp_path / "system.slice" / f"docker-{cid}.scope"
    _write(base / "cpu.stat", "usage_usec 2000000\nuser_usec 1500000\nsystem_usec 500000\n")
    _write(base / "memory.current", "10000\n")
    _write(base / "memory.stat", "anon 6000\nfile 3000\ninactive_file 2500\n")
    _write(base / "memory.max", "max\n")
    _write(base / "io.stat", "254:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n")
    _write(base / "pids.current", "3\n")
    layout = CgroupLayout(tmp_path)
    assert layout.v2
    rel = layout.find(cid)
    assert rel == f"system.slice/docker-{cid}.scope"
    s = layout.read(rel, 0, None, tmp_path / "noproc")
    assert (s.cpu_total_ns, s.cpu_user_ns, s.cpu_system_ns) == (2e9, 1.5e9, 0.5e9)
    assert (s.memory_usage, s.memory_working_set, s.memory_rss, s.memory_cache) == (
        10000,
        7500,
        6000,
        3000,
    )
    assert s.io_read_bytes == {"254:0": 4096} and s.io_write_bytes == {"254:0": 8192}
    assert s.pids == 3 and s.networks == {}
    assert layout.find("c" * 64) is None


def test_net_dev_parsing_ignores_garbage(tmp_path: Path) -> None:
    f = tmp_path / "dev"
    f.write_text("h1\nh2\n lo: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16\nbroken line\n")
    assert list(read_net_dev(f)) == ["lo"]
    assert read_net_dev(tmp_path / "missing") == {}
    f.write_text("h1\nh2\n eth0: 1 2 x 4 5 6 7 8 9 10 11 12\n lo: " + " ".join("7" * 16) + "\n")
    assert list(read_net_dev(str(f))) == ["lo"]  # a field that is no number: the line skipped


def test_cgroup_file_readers_on_odd_contents(tmp_path: Path) -> None:
    f = tmp_path / "f"
    missing = str(tmp_path / "missing")
    assert _read(missing) is None and _read_int(missing) is None and _read_kv(missing) == {}
    assert _read(str(tmp_path)) is None  # a directory: EISDIR on read, no exception
    for text, value in [("max\n", 0), (" 42\n", 42), ("", None), ("4x\n", None)]:
        f.write_text(text)
        assert _read_int(str(f)) == value, text
    f.write_text("anon 10\nfile x\nbroken\n\ninactive_file 3\n")
    assert _read_kv(str(f)) == {b"anon": 10, b"inactive_file": 3}
    big = "".join(f"key{i} {i}\n" for i in range(20_000))  # past one read's 64 KiB
    f.write_text(big)
    assert _read(str(f)) == big.encode() and _read_kv(str(f))[b"key19999"] == 19_999


def test_label_sanitising() -> None:
    assert (
        sanitize_label("com.docker.compose.service") == "container_label_com_docker_compose_service"
    )
    assert sanitize_label("a-b/c") == "container_label_a_b_c"


class _State:
    def __init__(self, inventory: Inventory) -> None:
        self.inventory = inventory
        self.stats = None


def _scrape(registry: CollectorRegistry) -> dict[str, list]:
    text = generate_latest(registry).decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def test_series_follow_the_inventory() -> None:
    inv = Inventory()
    meta = ContainerMeta("c1", "/web", "nginx", {"team": "a", "secret": "x"}, "h")
    info = inv.seen_in_listing(meta, "running")
    info.stats = StatsSample(0, 1_000_000_000, 0, 0, None, 1, 10, 5, 3, 2, 0, 1)
    info.log_lines["stdout"] = 7
    reg = CollectorRegistry()
    reg.register(ContainerCollector(_State(inv), ["team"]))  # type: ignore[arg-type]
    got = _scrape(reg)
    cpu = got["container_cpu_usage_seconds"][0]
    assert cpu.value == 1.0 and cpu.labels["container_label_team"] == "a"
    assert "container_label_secret" not in cpu.labels
    assert cpu.labels["id"] == "/docker/c1" and cpu.labels["name"] == "web"
    lines = {s.labels["stream"]: s.value for s in got["container_log_lines"]}
    assert lines == {"stdout": 7, "stderr": 0}
    states = {s.labels["state"]: s.value for s in got["container_state"]}
    assert states["running"] == 1 and sum(states.values()) == 1
    # It dies: stats series go, state stays; it is destroyed: everything goes.
    inv.on_event(meta, "die", {"exitCode": "3"}, 1)
    got = _scrape(reg)
    assert "container_cpu_usage_seconds" not in got
    assert got["container_last_exit_code"][0].value == 3
    inv.on_event(meta, "destroy", {}, 2)
    assert _scrape(reg) == {}


async def test_agent_collector_reports_buffers_drops_and_exporter_counters(tmp_path) -> None:
    import asyncio

    from agent.delivery.buffer import DiskBuffer
    from agent.delivery.runner import ExporterRunner
    from agent.metrics.collectors import AgentCollector
    from agent.retry import Backoff
    from agent.tap import TapHub
    from exporters.file import FileConfig, FileExporter

    buf = DiskBuffer(tmp_path / "b", 4096, "drop_newest")
    buf.open()
    cfg = FileConfig(type="file", path=str(tmp_path / "o.ndjson"))
    exporter = FileExporter("out", cfg)
    exporter.requests = 5  # an exporter that counts its own requests
    runner = ExporterRunner(exporter, cfg, Backoff(0.1, 1), buf)
    runner.dropped["queue_full"] = 2
    buf.dropped["buffer_full"] = 7
    buf.records = 3

    class Disc:
        reconnects = 1
        events_seen = 4
        connected = asyncio.Event()

    class Pipe:
        runners = [runner]

    class Fol:
        followed = 2
        unavailable = 0
        lines_lost = 0
        processing = None

    state = type(
        "S",
        (),
        {
            "pipeline": Pipe,
            "discovery": Disc,
            "followers": Fol,
            "stats": None,
            "reloader": None,
            "tap": TapHub(),
        },
    )
    reg = CollectorRegistry()
    reg.register(AgentCollector(state))  # type: ignore[arg-type]
    got = _scrape(reg)
    drops = {s.labels["reason"]: s.value for s in got["container_agent_records_dropped"]}
    assert drops == {"queue_full": 2, "shutdown": 0, "buffer_full": 7}
    assert got["container_agent_buffer_records"][0].value == 3
    assert got["container_agent_exporter_requests"][0].value == 5
    assert got["container_agent_engine_reconnects"][0].value == 1
    buf.close()


async def test_a_round_reads_located_cgroups_in_a_thread_and_asks_the_api_for_the_rest(
    tmp_path: Path,
) -> None:
    """Containers whose cgroup is found are read together off the loop; one without a
    cgroup is asked of the API; one whose files fail is counted, not fatal."""
    import threading

    from agent.metrics.stats import StatsCollector

    ids = ["a" * 64, "b" * 64, "c" * 64]
    for cid in ids[:2]:
        rel = f"docker/{cid}"
        _write(tmp_path / "cpuacct" / rel / "cpuacct.usage", "3000000000\n")
        _write(tmp_path / "cpuacct" / rel / "cpuacct.stat", "user 250\nsystem 50\n")
        _write(tmp_path / "memory" / rel / "memory.usage_in_bytes", "9000\n")
        _write(tmp_path / "memory" / rel / "memory.stat", "total_rss 3000\n")
        _write(tmp_path / "pids" / rel / "pids.current", "4\n")
    proc = tmp_path / "proc"
    _write(proc / "stat", "cpu  100 0 100 800 0 0 0 0 0 0\ncpu0 50 0 50 400 0 0 0\n")
    asked: list[str] = []

    class Engine:
        async def stats(self, cid: str) -> dict:
            asked.append(cid)
            return json.loads((DATA / "stats_v1.json").read_text())

    inv = Inventory()
    for cid in ids:
        inv.seen_in_listing(ContainerMeta(cid, cid[:1], "img", {}, "h"), "running")
        inv.apply_inspect(cid, {"State": {"Running": True, "Pid": 0}, "HostConfig": {}})
    collector = StatsCollector(Engine(), inv, "auto", str(tmp_path), 10.0)  # type: ignore[arg-type]
    assert collector.cgroup is not None
    collector.cgroup.proc = proc
    threads: list[str] = []
    layout_read = collector.cgroup.layout.read

    def read(rel: str, *args: object) -> StatsSample:
        threads.append(threading.current_thread().name)
        if rel.endswith("b" * 64):
            raise ValueError("unreadable")
        return layout_read(rel, *args)  # type: ignore[arg-type]

    collector.cgroup.layout.read = read  # type: ignore[method-assign]
    await collector.collect_once()
    a, b, c = (inv.containers[cid] for cid in ids)
    assert a.stats is not None and a.stats.source == "cgroup" and a.stats.pids == 4
    assert b.stats is None and collector.errors == 1  # counted, and the round went on
    assert c.stats is not None and c.stats.source == "api" and asked == [ids[2]]
    assert threads and threading.main_thread().name not in threads
