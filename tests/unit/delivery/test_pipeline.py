"""Fan-out, bounded queues, policies and drains, with in-memory exporters (no engine)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from agent.delivery.buffer import DiskBuffer
from agent.delivery.pipeline import ExporterStartError, Pipeline, _lowest_accepted
from agent.delivery.queue import RecordQueue
from agent.delivery.runner import ExporterRunner
from agent.positions import FileMark, Position
from agent.record import ContainerMeta, Record
from agent.retry import Backoff
from exporters.base import Exporter, ExporterConfig


class Config(ExporterConfig):
    type: str = "memory"


class Memory(Exporter):
    type_name = "memory-test"
    config_class = Config

    def __init__(self, name: str, config: Config, gate: asyncio.Event | None = None) -> None:
        super().__init__(name, config)
        self.got: list[Record] = []
        self.gate = gate
        self.fail = 0
        self.closed = False

    async def send(self, batch: Sequence[Record]) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            self.fail -= 1
            raise OSError("backend down")
        self.got.extend(batch)

    async def close(self) -> None:
        self.closed = True


def recs(n: int, name: str = "web") -> list[Record]:
    m = ContainerMeta(name, name, "img", {}, "h")
    return [Record.log(f"t{i}", m, "stdout", str(i), False) for i in range(n)]


def runner(exp: Memory, **cfg: object) -> ExporterRunner:
    return ExporterRunner(exp, Config(**cfg), Backoff(0.001, 0.01))


async def test_queue_bounds_by_records_and_joins_batches() -> None:
    q = RecordQueue(10)
    q.put_nowait(recs(4))
    q.put_nowait(recs(4))
    assert q.has_room()
    q.put_nowait(recs(4))
    assert not q.has_room() and q.size == 12
    put = asyncio.create_task(q.put(recs(1)))
    await asyncio.sleep(0.01)
    assert not put.done()
    got = await q.get(8)
    assert len(got) == 8 and q.size == 4
    await asyncio.wait_for(put, 1)
    assert q.size == 5


async def test_cancelled_put_still_queues_the_batch() -> None:
    q = RecordQueue(1)
    q.put_nowait(recs(1))
    put = asyncio.create_task(q.put(recs(3)))
    await asyncio.sleep(0.01)
    put.cancel()
    with pytest.raises(asyncio.CancelledError):
        await put
    assert q.size == 4


async def test_slow_exporter_does_not_stall_the_others_while_it_has_room() -> None:
    gate = asyncio.Event()
    slow, fast = Memory("slow", Config(), gate), Memory("fast", Config())
    p = Pipeline([runner(slow, queue_records=1000), runner(fast)])
    await p.start()
    for _ in range(5):
        await asyncio.wait_for(p.send(recs(100)), 1)
    await asyncio.sleep(0.05)
    assert len(fast.got) == 500 and slow.got == []
    gate.set()
    await p.close(2)
    assert len(slow.got) == 500 and slow.closed and fast.closed


async def test_block_policy_applies_back_pressure_and_loses_nothing() -> None:
    gate = asyncio.Event()
    slow = Memory("slow", Config(), gate)
    p = Pipeline([runner(slow, queue_records=100)])
    await p.start()
    await p.send(recs(100))
    await asyncio.sleep(0.01)  # the worker takes that batch and waits at the gate
    await p.send(recs(100))  # fills the queue
    blocked = asyncio.create_task(p.send(recs(50)))
    await asyncio.sleep(0.05)
    assert not blocked.done()
    gate.set()
    await asyncio.wait_for(blocked, 1)
    await p.close(2)
    assert len(slow.got) == 250
    assert not p.runners[0].dropped


async def test_has_room_tells_when_put_now_may_hand_a_batch_on() -> None:
    """``put_now`` (a reader that cannot wait) only after ``has_room``: not while paused,
    nor while a blocking queue is full; a queue that drops when full always has room."""
    gate = asyncio.Event()
    slow, other = Memory("slow", Config(), gate), Memory("other", Config(), gate)
    dropping = runner(other, queue_records=10, when_full="drop_newest")
    p = Pipeline([runner(slow, queue_records=10), dropping])
    await p.start()
    assert p.has_room()
    p.put_now(recs(4))
    await asyncio.sleep(0.01)  # the workers take that batch and wait at the gate
    p.put_now(recs(10))  # fills both queues
    assert not p.has_room() and dropping.has_room()
    p.pause()
    assert not p.has_room()
    p.resume()
    gate.set()
    await asyncio.sleep(0.05)
    assert p.has_room()
    await p.close(2)
    assert len(slow.got) == len(other.got) == 14 and not dropping.dropped


async def test_drop_newest_counts_every_drop() -> None:
    gate = asyncio.Event()
    slow, fast = Memory("slow", Config(), gate), Memory("fast", Config())
    r_slow = runner(slow, queue_records=100, when_full="drop_newest")
    p = Pipeline([r_slow, runner(fast)])
    await p.start()
    for _ in range(5):
        await asyncio.wait_for(p.send(recs(60)), 1)
    gate.set()
    await p.close(2)
    assert len(fast.got) == 300
    assert len(slow.got) + r_slow.dropped["queue_full"] == 300
    assert r_slow.dropped["queue_full"] > 0 and r_slow.received == 300


async def test_failed_batches_are_retried_not_lost() -> None:
    flaky = Memory("flaky", Config())
    flaky.fail = 3
    r = runner(flaky)
    p = Pipeline([r])
    await p.start()
    await p.send(recs(10))
    await p.close(2)
    assert len(flaky.got) == 10 and r.failures == 3 and r.exported == 10


async def test_per_exporter_container_filter() -> None:
    only_db = Memory("db", Config())
    everything = Memory("all", Config())
    p = Pipeline(
        [
            runner(only_db, containers={"include": {"name": ["^db$"]}}),
            runner(everything),
        ]
    )
    await p.start()
    await p.send(recs(3, "web") + recs(2, "db"))
    await p.close(2)
    assert {r.meta.name for r in only_db.got} == {"db"} and len(everything.got) == 5


async def test_drain_is_bounded_and_counts_what_is_left() -> None:
    stuck = Memory("stuck", Config(), asyncio.Event())
    r = runner(stuck)
    p = Pipeline([r])
    await p.start()
    await p.send(recs(5))
    await p.send(recs(7))
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await p.close(0.2)
    assert loop.time() - t0 < 1
    assert r.dropped["shutdown"] == 12  # queued and in the exporter's hands: all counted


def test_backoff_is_capped_full_jitter() -> None:
    b = Backoff(0.5, 4)
    assert b.ceiling(0) == 0.5 and b.ceiling(3) == 4 and b.ceiling(100) == 4
    delays = [b.delay(10) for _ in range(200)]
    assert all(0 <= d <= 4 for d in delays) and max(delays) > 2 and min(delays) < 2


async def test_checkpoint_is_the_lowest_position_over_durable_exporters() -> None:
    fast, slow_gate = Memory("fast", Config()), asyncio.Event()
    slow = Memory("slow", Config(), slow_gate)
    dropper = Memory("dropper", Config(), asyncio.Event())  # never sends: must not matter
    r_fast, r_slow = runner(fast), runner(slow)
    r_drop = runner(dropper, when_full="drop_newest")
    p = Pipeline([r_fast, r_slow, r_drop])
    await p.start()
    await p.send(recs(3))
    await asyncio.sleep(0.05)
    # fast accepted t0..t2, slow nothing yet: no position can be claimed for the stream
    assert p.delivered({}) == ({}, {})
    slow_gate.set()
    await asyncio.sleep(0.05)
    got, marks = p.delivered({})
    assert got["web"]["stdout"].timestamp == "t2"
    assert marks == {}  # records read through the API carry no file position
    assert r_drop.durable is False and r_fast.durable is True
    p.forget(set())
    assert p.delivered({}) == ({}, {})
    await p.close(0.1)


async def test_checkpoint_takes_the_slower_of_two_exporters_that_both_made_progress() -> None:
    """Both durable exporters accepted lines, one more than the other: the checkpoint is
    the slower one's position (taking the faster one's would lose the slower exporter's
    lines after a restart). Also when the two differ only in the count of lines sharing
    the last timestamp."""
    gate = asyncio.Event()
    gate.set()
    fast, slow = Memory("fast", Config()), Memory("slow", Config(), gate)
    r_fast, r_slow = runner(fast), runner(slow)
    p = Pipeline([r_fast, r_slow])
    await p.start()
    await p.send(recs(3))  # t0..t2 to both
    await asyncio.sleep(0.05)
    gate.clear()  # slow stops taking
    later = recs(3)
    for i, r in enumerate(later):
        r.timestamp = f"t{i + 3}"
    await p.send(later)  # t3..t5: fast only
    await asyncio.sleep(0.05)
    assert r_fast.acked["web"]["stdout"] == Position("t5", 1)
    assert r_slow.acked["web"]["stdout"] == Position("t2", 1)
    assert p.delivered({})[0]["web"]["stdout"] == Position("t2", 1)
    # Same stamp, different counts: the lower count is the lower position.
    r_fast.acked["web"]["stdout"] = Position("t9", 3)
    r_slow.acked["web"]["stdout"] = Position("t9", 1)
    assert p.delivered({})[0]["web"]["stdout"] == Position("t9", 1)
    r_fast.acked["web"]["stdout"], r_slow.acked["web"]["stdout"] = (
        r_slow.acked["web"]["stdout"],
        r_fast.acked["web"]["stdout"],
    )
    assert p.delivered({})[0]["web"]["stdout"] == Position("t9", 1)  # whichever is slower
    gate.set()
    await p.close(0.5)


async def test_file_mark_is_the_earliest_over_durable_exporters() -> None:
    """Each batch a files reader emits ends in a record marked with the file position
    after it; the checkpoint's mark is the one every durable exporter has passed, with
    the stream positions at that point."""
    fast, slow_gate = Memory("fast", Config()), asyncio.Event()
    slow = Memory("slow", Config(), slow_gate)
    r_fast, r_slow = runner(fast), runner(slow)
    p = Pipeline([r_fast, r_slow])
    await p.start()
    first, second = recs(3), recs(3)
    for i, r in enumerate(second):
        r.timestamp = f"t{i + 3}"
    first[-1].mark = (7, 300)
    second[-1].mark = (7, 600)
    await p.send(first)
    await p.send(second)
    await asyncio.sleep(0.05)
    assert r_fast.marks["web"].offset == 600 and "web" not in r_slow.marks
    assert p.delivered({})[1] == {}  # slow has no mark yet: none can be claimed
    slow_gate.set()
    await asyncio.sleep(0.05)
    mark = p.delivered({})[1]["web"]
    assert (mark.inode, mark.offset, mark.timestamp) == (7, 600, "t5")
    assert mark.streams == {"stdout": Position("t5", 1)}
    r_slow.marks["web"] = FileMark(7, 300, "t2", {"stdout": Position("t2", 1)})
    assert p.delivered({})[1]["web"].offset == 300  # the slower exporter's
    p.forget(set())
    assert p.delivered({}) == ({}, {})
    await p.close(0.1)


async def test_no_durable_exporter_means_no_hold_back() -> None:
    p = Pipeline([runner(Memory("x", Config()), when_full="drop_newest")])
    assert p.delivered({}) is None


# -- found by mutation testing (mutmut over pipeline.py, checkpoint.py, reader.py) --------


async def test_a_batch_one_exporter_does_not_want_still_reaches_the_next() -> None:
    only_db = Memory("db", Config())
    everything = Memory("all", Config())
    p = Pipeline([runner(only_db, containers={"include": {"name": ["^db$"]}}), runner(everything)])
    await p.start()
    await p.send(recs(3, "web"))  # nothing for db: the loop must go on to "all"
    await p.close(2)
    assert only_db.got == [] and len(everything.got) == 3


async def test_an_exporter_that_does_not_take_a_container_does_not_hold_its_checkpoint() -> None:
    only_db = Memory("db", Config(), asyncio.Event())  # would never accept anything
    everything = Memory("all", Config())
    r_db = runner(only_db, containers={"include": {"name": ["^db$"]}})
    p = Pipeline([r_db, runner(everything)])
    await p.start()
    batch = recs(3, "web")
    await p.send(batch)
    await asyncio.sleep(0.05)
    got, _marks = p.delivered({"web": batch[0].meta})
    assert got["web"]["stdout"] == Position("t2", 1)
    only_db.gate.set()  # type: ignore[union-attr]
    await p.close(0.5)


async def test_forget_keeps_what_is_known_and_drops_the_rest() -> None:
    r = runner(Memory("x", Config()))
    p = Pipeline([r])
    mark = FileMark(1, 10, "t1", {})
    r.acked = {"kept": {"stdout": Position("t1", 1)}, "gone": {"stdout": Position("t1", 1)}}
    r.marks = {"kept": mark, "gone": mark}
    p.forget({"kept"})
    assert set(r.acked) == {"kept"} and set(r.marks) == {"kept"}


async def test_paused_sends_wait_until_resumed() -> None:
    exp = Memory("x", Config())
    p = Pipeline([runner(exp)])
    await p.start()
    p.pause()
    sending = asyncio.create_task(p.send(recs(2)))
    await asyncio.sleep(0.05)
    assert not sending.done() and exp.got == []
    p.resume()
    await asyncio.wait_for(sending, 1)
    await p.close(1)
    assert len(exp.got) == 2


async def test_add_and_remove_exporters_while_running() -> None:
    first, second = Memory("first", Config()), Memory("second", Config())
    p = Pipeline([runner(first)])
    await p.start()
    await p.send(recs(1))
    await p.add(runner(second))
    await p.send(recs(2))
    await asyncio.sleep(0.05)
    assert [r.name for r in p.runners] == ["first", "second"]
    await p.remove("first", asyncio.get_running_loop().time() + 1)
    await p.send(recs(3))
    await p.close(1)
    assert len(first.got) == 3 and first.closed  # drained before it was closed
    assert len(second.got) == 5


async def test_swap_hands_the_queue_over_and_loses_nothing() -> None:
    """The successor takes over the queued batches; a batch the old exporter is still
    sending at the bound goes back to the front of the queue (sent again by the new)."""
    gate = asyncio.Event()
    old = Memory("x", Config(), gate)  # stuck sending its first batch
    new = Memory("x", Config())
    r_old = runner(old)
    p = Pipeline([r_old])
    await p.start()
    await p.send(recs(2))  # taken by the old worker, stuck in send
    await asyncio.sleep(0.02)
    later = recs(3)
    for i, r in enumerate(later):
        r.timestamp = f"u{i}"
    await p.send(later)  # queued behind it
    r_new = runner(new, queue_records=10)
    await p.swap(r_new, asyncio.get_running_loop().time() + 0.1, keep_buffer=False)
    assert p.runners == [r_new] and r_new.queue is r_old.queue and r_new.queue.capacity == 10
    await p.close(1)
    assert [r.timestamp for r in new.got] == ["t0", "t1", "u0", "u1", "u2"]
    assert old.got == [] and old.closed


async def test_an_exporter_whose_filter_takes_the_container_holds_its_checkpoint() -> None:
    """A filtered exporter that does take the container (and an unknown container,
    to be safe) holds the checkpoint back until it accepts the lines."""
    gate = asyncio.Event()
    web_only = Memory("web-only", Config(), gate)
    r_web = runner(web_only, containers={"include": {"name": ["^web$"]}})
    p = Pipeline([r_web, runner(Memory("all", Config()))])
    await p.start()
    batch = recs(3, "web")
    await p.send(batch)
    await asyncio.sleep(0.05)
    assert p.delivered({"web": batch[0].meta}) == ({}, {})  # web-only has none yet
    assert p.delivered({}) == ({}, {})  # metadata unknown: every durable exporter counts
    gate.set()
    await asyncio.sleep(0.05)
    assert p.delivered({"web": batch[0].meta})[0]["web"]["stdout"] == Position("t2", 1)
    await p.close(0.5)


async def test_remove_counts_what_could_not_be_delivered_in_time_as_removed() -> None:
    stuck = Memory("stuck", Config(), asyncio.Event())
    r = runner(stuck)
    p = Pipeline([r])
    await p.start()
    await p.send(recs(4))
    await p.remove("stuck", asyncio.get_running_loop().time() + 0.05)
    assert r.dropped == {"removed": 4} and p.runners == [] and stuck.closed


async def test_swap_among_several_replaces_only_its_namesake() -> None:
    a, b, b2 = Memory("a", Config()), Memory("b", Config()), Memory("b", Config())
    r_a, r_b2 = runner(a), runner(b2)
    p = Pipeline([r_a, runner(b)])
    await p.start()
    await p.swap(r_b2, asyncio.get_running_loop().time() + 1, keep_buffer=False)
    assert p.runners == [r_a, r_b2]
    await p.send(recs(2))
    await p.close(1)
    assert len(a.got) == 2 and len(b2.got) == 2 and b.got == []


class Failing(Memory):
    async def start(self) -> None:
        raise OSError(13, "Permission denied", "/nowhere")


async def test_a_successor_that_cannot_start_leaves_the_old_exporter_running() -> None:
    old = Memory("x", Config())
    r_old = runner(old)
    p = Pipeline([r_old])
    await p.start()
    with pytest.raises(ExporterStartError, match=r"exporters\.x: Permission denied"):
        await p.swap(runner(Failing("x", Config())), asyncio.get_running_loop().time() + 1, False)
    assert p.runners == [r_old]
    await p.send(recs(2))
    await p.close(1)
    assert len(old.got) == 2


async def test_swap_keeps_or_replaces_the_disk_buffer(tmp_path: Path) -> None:
    def buffered(exp: Memory, where: str) -> ExporterRunner:
        r = runner(exp)
        r.buffer = DiskBuffer(tmp_path / where, 1 << 20, "block", False)
        return r

    old, kept, moved = Memory("x", Config()), Memory("x", Config()), Memory("x", Config())
    r_old = buffered(old, "buf")
    p = Pipeline([r_old])
    await p.start()
    r_kept = runner(kept)
    await p.swap(r_kept, asyncio.get_running_loop().time() + 1, keep_buffer=True)
    assert r_kept.buffer is r_old.buffer
    await p.send(recs(2))
    await asyncio.sleep(0.1)
    r_moved = buffered(moved, "buf2")
    await p.swap(r_moved, asyncio.get_running_loop().time() + 1, keep_buffer=False)
    await p.send(recs(3))
    await p.close(1)
    assert len(kept.got) == 2 and len(moved.got) == 3
    assert (tmp_path / "buf2").is_dir()


async def test_a_worker_that_dies_is_restarted_and_its_batch_delivered() -> None:
    """An unexpected error in a worker (here: in acknowledging a batch) used to end the
    worker for good, silently: the exporter never sent again. The worker is started again
    after the back-off, the batch it had taken goes back to the queue, and the exporter is
    reported unhealthy meanwhile."""
    exp = Memory("x", Config())
    r = runner(exp)
    p = Pipeline([r])
    await p.start()
    calls = 0
    real_ack = r._ack

    def flaky_ack(batch: list[Record]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise KeyError("a bug")
        real_ack(batch)

    r._ack = flaky_ack  # type: ignore[method-assign]
    with capture_logs() as logs:
        await p.send(recs(3))
        await asyncio.sleep(0.1)  # the back-off here is a few ms
        await p.close(1)
    failed = [e for e in logs if e["event"] == "exporter_worker_failed"]
    assert [(e["exporter"], e["error"]) for e in failed] == [("x", "KeyError: 'a bug'")]
    assert r.worker_error == "" and r.failures == 1
    assert r.acked["web"]["stdout"] == Position("t2", 1)  # acknowledged once restarted
    assert len(exp.got) == 6  # sent again (at least once): nothing lost


async def test_a_route_takes_some_records_and_holds_no_checkpoint_back() -> None:
    """Only `error` and above go to the alerting exporter, everything to the other; the
    records its route leaves out count as done for it (the checkpoint moves on)."""
    from agent.record import Extra

    alerts, everything = Memory("alerts", Config()), Memory("all", Config())
    r_alerts = runner(alerts, route={"min_level": "error"})
    p = Pipeline([r_alerts, runner(everything)])
    await p.start()
    batch = recs(4)
    for r, level in zip(batch, ["info", "error", None, "fatal"], strict=True):
        if level is not None:
            r.extra = Extra()
            r.extra.level = level
    batch.append(Record.event("t9", batch[0].meta, "die", {}))
    await p.send(batch)
    await p.close(1)
    assert [r.message for r in alerts.got if r.kind == "log"] == ["1", "3"]
    assert [r.action for r in alerts.got if r.kind == "event"] == ["die"]
    assert len(everything.got) == 5
    assert r_alerts.acked["web"]["stdout"] == Position("t3", 1)
    assert r_alerts.exported == 3


def test_route_by_kind_and_stream() -> None:
    from exporters.base import RouteConfig

    route = RouteConfig.model_validate({"kinds": ["log"], "streams": ["stderr"]})
    m = ContainerMeta("web", "web", "img", {}, "h")
    assert route.accepts(Record.log("t", m, "stderr", "x", False))
    assert not route.accepts(Record.log("t", m, "stdout", "x", False))
    assert not route.accepts(Record.event("t", m, "die", {}))
    assert RouteConfig().everything and not route.everything


class Counting(Memory):
    """Records each send's size."""

    def __init__(self, name: str, config: Config, linger: float) -> None:
        super().__init__(name, config)
        self.linger_seconds = linger
        self.sends: list[int] = []

    async def send(self, batch: Sequence[Record]) -> None:
        self.sends.append(len(batch))
        await super().send(batch)


async def test_a_linger_sends_trickling_batches_together_and_a_drain_ends_it() -> None:
    exp = Counting("e", Config(), linger=0.5)
    r = runner(exp)
    r.start()
    await r.put(recs(1, "a"))  # the first after a quiet spell goes at once
    await asyncio.sleep(0.05)
    assert exp.sends == [1]
    for name in "bcdef":  # five readers' lines while the worker lingers
        await r.put(recs(1, name))
        await asyncio.sleep(0.01)
    assert exp.sends == [1]
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await r.drain(loop.time() + 5)  # a shutdown does not wait for the linger
    assert loop.time() - t0 < 0.3
    assert exp.sends == [1, 5] and len(exp.got) == 6
    await r.stop()


async def test_a_full_batch_ends_a_linger() -> None:
    exp = Counting("e", Config(), linger=30)
    r = runner(exp, queue_records=10_000)
    r.start()
    await r.put(recs(1))
    await asyncio.sleep(0.05)
    await r.put(recs(1500))
    await asyncio.sleep(0.05)
    assert exp.sends == [1]  # lingering: 1,500 queued is not a full batch
    await r.put(recs(1000))
    for _ in range(100):
        if len(exp.sends) > 1:
            break
        await asyncio.sleep(0.01)
    assert exp.sends[:2] == [1, 1500]  # (batches are joined whole, up to 2,048 records)
    await r.drain(asyncio.get_running_loop().time() + 5)
    assert sum(exp.sends) == 2501
    await r.stop()


async def test_no_linger_sends_each_batch_as_it_comes() -> None:
    exp = Counting("e", Config(), linger=0)
    r = runner(exp)
    r.start()
    for name in "abc":
        await r.put(recs(1, name))
        await asyncio.sleep(0.02)
    assert exp.sends == [1, 1, 1]
    await r.stop()


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["a", "b", "c", "d"]),
        st.dictionaries(
            st.sampled_from(["stdout", "stderr"]),
            st.tuples(st.sampled_from(["t1", "t2"]), st.integers(1, 3)),
        ),
    ),
    st.sets(st.sampled_from(["a", "b", "c", "d", "e"])),
)
def test_one_exporter_for_every_container_checkpoints_what_it_accepted(
    acked: dict[str, dict[str, tuple[str, int]]], marked: set[str]
) -> None:
    """With one durable exporter that takes every container (the usual agent),
    ``delivered`` skips the minimum over exporters and streams; it must say what the
    minimum would say. Fails when the shortcut keeps an empty container, a mark of a
    container with nothing acknowledged, or drops a stream."""
    r = runner(Memory("only", Config()))
    r.acked = {c: {s: Position(*p) for s, p in per.items()} for c, per in acked.items()}
    r.marks = {c: FileMark(1, 10, "t1", {}) for c in marked}
    p = Pipeline([r])
    assert r.durable and r.config.containers.everything
    assert p.delivered({}) == _lowest_accepted([r], {})
    meta = ContainerMeta(id="a", name="a", image="i", labels={}, host="h")
    assert p.delivered({"a": meta}) == _lowest_accepted([r], {"a": meta})
