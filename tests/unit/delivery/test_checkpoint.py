"""Checkpoint files: atomic writes, round trips, and every way a file can be unusable."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from agent.delivery.checkpoint import CheckpointError, CheckpointStore
from agent.positions import FileMark, Position

T1 = "2026-01-01T00:00:01.000000000Z"


def test_round_trip_and_no_write_when_unchanged(tmp_path: Path) -> None:
    store = CheckpointStore(str(tmp_path / "state"), 1.0)
    assert store.load() == ({}, {})
    positions = {"c1": {"stdout": Position(T1, 2), "stderr": Position(T1, 1)}, "c2": {}}
    assert store.write(positions) is True
    assert store.write(positions) is False  # nothing moved: no disk write
    assert not list((tmp_path / "state").glob("*.tmp"))
    again = CheckpointStore(str(tmp_path / "state"), 1.0)
    # c2 was followed and has nothing delivered yet: kept, to be read from its start.
    assert again.load() == (
        {"c1": {"stdout": Position(T1, 2), "stderr": Position(T1, 1)}, "c2": {}},
        {},
    )
    assert again.written_at > 0
    assert again.write(positions) is False  # the file holds these: no write after a restart
    doc = orjson.loads((tmp_path / "state" / "checkpoints.json").read_bytes())
    assert list(doc) == ["version", "written_at", "containers"] and doc["version"] == 1
    positions["c1"]["stdout"] = Position(T1, 3)
    assert store.write(positions) is True and store.writes == 2


def test_file_marks_round_trip_beside_the_stream_positions(tmp_path: Path) -> None:
    store = CheckpointStore(str(tmp_path), 1.0)
    positions = {"c1": {"stdout": Position(T1, 2)}, "c2": {"stderr": Position(T1, 1)}}
    mark = FileMark(123456, 98765, T1, {"stdout": Position(T1, 2)}, tail=b"not kept")
    assert store.write(positions, {"c1": mark, "gone": mark}) is True
    loaded_positions, marks = CheckpointStore(str(tmp_path), 1.0).load()
    assert loaded_positions == positions
    # The tail is only an in-memory check; a mark of a container without positions is
    # not written.
    assert marks == {"c1": FileMark(123456, 98765, T1, {"stdout": Position(T1, 2)})}
    # A moved mark is a change worth a write.
    assert store.write(positions, {"c1": FileMark(123456, 99999, T1, {})}) is True


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"{not json", "not JSON"),
        (b'{"version": 1, "containers": {"c1": {"stdout": {"timest', "not JSON"),  # torn
        (b"[1, 2]", "not an object"),
        (b'{"version": 99, "containers": {}}', "unknown format"),
        (b'{"version": 1}', "no containers"),
        (
            b'{"version": 1, "containers": {"c1": {"stdin": {"timestamp": "t", "count": 1}}}}',
            "unknown stream",
        ),
        (
            b'{"version": 1, "containers": {"c1": {"file": {"inode": "x", "offset": 1}}}}',
            "bad file position",
        ),
        (
            b'{"version": 1, "containers": {"c1": {"file": {"inode": 1, "offset": 2, '
            b'"timestamp": "t", "streams": {"stdout": {"count": 1}}}}}}',
            "bad position",
        ),
        (
            b'{"version": 1, "containers": {"c1": {"stdout": {"timestamp": 5, "count": 1}}}}',
            "bad position",
        ),
        (b"\xff\xfe\x00garbage", "not JSON"),
    ],
)
def test_unusable_files_are_reported_and_moved_aside(
    tmp_path: Path, content: bytes, reason: str
) -> None:
    store = CheckpointStore(str(tmp_path), 1.0)
    store.path.write_bytes(content)
    with pytest.raises(CheckpointError, match=reason):
        store.load()
    moved = store.quarantine()
    assert moved is not None and moved.read_bytes() == content
    assert store.load() == ({}, {})


def test_unreadable_directory_is_an_error_not_a_crash(tmp_path: Path) -> None:
    (tmp_path / "checkpoints.json").mkdir()  # a directory where the file should be
    with pytest.raises(CheckpointError, match="cannot read"):
        CheckpointStore(str(tmp_path), 1.0).load()


def test_containers_are_written_as_their_positions_and_marks_say() -> None:
    """The mapping is encoded with the ``Position`` dataclasses as they are (orjson writes
    them natively): the bytes must be those of the positions' and marks' ``to_dict``
    (what ``load`` reads back), the stream order kept, and an empty entry kept."""
    positions = {
        "a": {"stderr": Position("t2", 2), "stdout": Position("t1", 1)},
        "b": {"stdout": Position("t3", 1)},
        "c": {},
    }
    marks = {"b": FileMark(7, 70, "t3", {"stdout": Position("t3", 1)}, b"tail")}
    expected = {cid: {s: p.to_dict() for s, p in per.items()} for cid, per in positions.items()}
    expected["b"]["file"] = marks["b"].to_dict()
    assert CheckpointStore.encode_containers(positions, marks) == orjson.dumps(expected)
    assert CheckpointStore.encode_containers(positions) == orjson.dumps(
        {cid: {s: p.to_dict() for s, p in per.items()} for cid, per in positions.items()}
    )
