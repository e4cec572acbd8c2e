"""The agent's event loop gathers the wake-ups of a lightly loaded loop, and holds back
neither timers nor a busy loop."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

from agent.eventloop import (
    FLOWING_BYTES,
    GatheringSelector,
    flowing,
    new_loop,
    set_window,
    urgent,
)


def _wakes(window: float, events: int, gap: float, flood: bool = False) -> tuple[int, list[float]]:
    """Reads ``events`` bytes written ``gap`` s apart by a thread; (loop wakes that found
    data, delay of each byte from its write to its read)."""
    loop = new_loop(window)
    a, b = socket.socketpair()
    a.setblocking(False)
    sent: list[float] = []
    delays: list[float] = []
    wakes = 0

    def writer() -> None:
        for _ in range(events):
            time.sleep(gap)
            sent.append(time.monotonic())
            b.send(b"x")

    async def main() -> None:
        nonlocal wakes
        done = asyncio.Event()

        def readable() -> None:
            nonlocal wakes
            wakes += 1
            now = time.monotonic()
            got = a.recv(4096)
            if flood:  # as a source that read a flood's worth at once says
                flowing(FLOWING_BYTES)
            first = len(delays)
            delays.extend([now - sent[first + i] for i in range(len(got))])
            if len(delays) == events:
                done.set()

        loop.add_reader(a.fileno(), readable)
        thread = threading.Thread(target=writer)
        thread.start()
        await asyncio.wait_for(done.wait(), 10)
        loop.remove_reader(a.fileno())
        await asyncio.to_thread(thread.join)

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
        a.close()
        b.close()
    return wakes, delays


def test_a_quiet_loop_handles_what_arrives_within_the_window_in_one_wake() -> None:
    """40 events 10 ms apart: without a window the loop wakes for (nearly) each; with a
    100 ms window it wakes about once per window, and no event waits much past it. Fails
    when the selector does not hold, or holds too long."""
    plain, _ = _wakes(0, 40, 0.01)
    gathered, delays = _wakes(0.1, 40, 0.01)
    assert plain >= 30
    assert gathered <= 12, gathered
    assert max(delays) < 0.1 + 0.05


def test_a_loop_whose_source_floods_is_not_held() -> None:
    """After a read of a flood's worth of bytes, no hold for a while: the engine would
    otherwise wait on full sockets (measured: half the bulk rate). Fails without the
    flowing check."""
    wakes, delays = _wakes(0.1, 40, 0.01, flood=True)
    assert wakes >= 30, wakes
    assert max(delays) < 0.05, delays


def test_the_first_event_after_a_quiet_spell_is_not_held() -> None:
    """Events a window apart or more: each is handled at once (the window counts from the
    last wake, it is no fixed delay)."""
    wakes, delays = _wakes(0.05, 5, 0.12)
    assert wakes == 5
    assert max(delays) < 0.03, delays


def test_timers_fire_on_time_and_a_busy_loop_is_not_held() -> None:
    loop = new_loop(0.2)
    selector = loop._selector  # type: ignore[attr-defined]
    assert isinstance(selector, GatheringSelector)

    async def main() -> tuple[float, float]:
        t0 = time.monotonic()
        await asyncio.sleep(0.02)  # a timer inside the window
        late = time.monotonic() - t0 - 0.02
        t0 = time.monotonic()
        for _ in range(200):  # 200 loop turns with ready work: never a hold
            await asyncio.sleep(0)
        return late, time.monotonic() - t0

    try:
        late, busy = loop.run_until_complete(main())
    finally:
        loop.close()
    assert late < 0.015, late
    assert busy < 0.1, busy


def test_the_window_changes_on_a_running_loop() -> None:
    loop = new_loop(0.05)
    try:
        set_window(loop, 0.0)
        assert loop._selector.window == 0.0  # type: ignore[attr-defined]
        other = asyncio.new_event_loop()
        set_window(other, 0.3)  # another kind of loop: left alone
        other.close()
    finally:
        loop.close()


def test_an_urgent_descriptor_and_a_threads_result_end_a_hold() -> None:
    """With a long window, a byte on a log-like socket waits for the window, but one on an
    urgent socket (a scrape) or a thread's result handed to the loop does not. Fails
    when the hold is a plain sleep."""
    loop = new_loop(0.5)
    a, b = socket.socketpair()
    fast_a, fast_b = socket.socketpair()
    for s in (a, fast_a):
        s.setblocking(False)
    urgent(loop, fast_a.fileno())

    async def main() -> tuple[float, float, float]:
        got: asyncio.Queue[float] = asyncio.Queue()
        loop.add_reader(a.fileno(), lambda: (a.recv(9), got.put_nowait(time.monotonic())))
        loop.add_reader(fast_a.fileno(), lambda: (fast_a.recv(9), got.put_nowait(time.monotonic())))
        b.send(b"x")  # a wake for events: the next poll may hold
        await got.get()
        await asyncio.sleep(0)
        t0 = time.monotonic()
        threading.Timer(0.05, fast_b.send, (b"x",)).start()
        urgent_delay = await got.get() - t0 - 0.05
        t0 = time.monotonic()
        await asyncio.to_thread(time.sleep, 0.05)  # the result comes through the self-pipe
        thread_delay = time.monotonic() - t0 - 0.05
        await asyncio.sleep(0)
        t0 = time.monotonic()
        threading.Timer(0.05, b.send, (b"x",)).start()
        plain_delay = await got.get() - t0 - 0.05
        return urgent_delay, thread_delay, plain_delay

    try:
        urgent_delay, thread_delay, plain_delay = loop.run_until_complete(main())
    finally:
        loop.close()
        for s in (a, b, fast_a, fast_b):
            s.close()
    assert urgent_delay < 0.1, urgent_delay
    assert thread_delay < 0.1, thread_delay
    assert plain_delay > 0.2, plain_delay  # held: the window counts from the last wake
