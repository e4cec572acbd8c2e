"""Event handling without an engine: replays skipped, out-of-order events kept."""

from __future__ import annotations

from agent.engine.discovery import Discovery
from agent.filters import ContainerFilter
from agent.record import ContainerMeta, Record
from agent.retry import Backoff


class FakeFollowers:
    def __init__(self) -> None:
        self.metas: dict[str, ContainerMeta] = {}
        self.positions: dict = {}
        self.followed: list[str] = []
        self.forgotten: list[str] = []

    def follow(self, meta: ContainerMeta) -> None:
        self.followed.append(meta.id)

    def forget(self, cid: str) -> None:
        self.forgotten.append(cid)

    def rename(self, cid: str, meta: ContainerMeta) -> None:
        self.metas[cid] = meta


def event(cid: str, action: str, ns: int, **attrs: str) -> dict:
    return {
        "Type": "container",
        "Action": action,
        "Actor": {"ID": cid, "Attributes": {"name": f"n-{cid}", "image": "img", **attrs}},
        "timeNano": ns,
    }


async def make() -> tuple[Discovery, FakeFollowers, list[Record]]:
    sent: list[Record] = []

    async def send(batch: list[Record]) -> None:
        sent.extend(batch)

    followers = FakeFollowers()
    d = Discovery(None, followers, send, ContainerFilter(), Backoff(0.1, 1), "h")  # type: ignore[arg-type]
    return d, followers, sent


async def test_out_of_order_events_are_kept_and_replays_skipped() -> None:
    d, followers, sent = await make()
    await d._handle(event("a", "start", 2_000))
    await d._handle(event("b", "destroy", 1_999))  # published a little late: still handled
    await d._handle(event("a", "start", 2_000))  # replayed after a reconnect: skipped
    await d._handle(event("c", "health_status: healthy", 2_000, team="x"))
    assert [(r.meta.id, r.action) for r in sent] == [
        ("a", "start"),
        ("b", "destroy"),
        ("c", "health_status"),
    ]
    assert sent[2].attributes["health_status"] == "healthy"
    assert sent[2].meta.labels == {"team": "x"}
    assert followers.followed == ["a"] and followers.forgotten == ["b"]


async def test_rename_updates_metadata() -> None:
    d, followers, sent = await make()
    await d._handle(event("a", "rename", 5, oldName="/old", name="new"))
    assert followers.metas["a"].name == "new"
    assert sent[0].attributes["oldName"] == "/old"
