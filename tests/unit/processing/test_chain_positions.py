"""The reader leaves the read positions to a chain's driver when the chain holds or drops
lines (``ChainDriver.sets_positions``): after every send they are what they were when the
reader advanced them too, for any batches, streams, shared stamps, groups and drops."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.positions import Position
from agent.processing.build import Processing
from agent.processing.chain import ChainDriver
from agent.processing.config import ProcessingConfig
from agent.record import Record
from agent.sources.base import StreamEnd
from tests.unit.processing.conftest import CID, meta, stamp
from tests.unit.sources.test_reader import Harness, ScriptedSource

JAVA = ["java.lang.IllegalStateException: x", "\tat A.b(A.java:1)", "Caused by: y", "plain"]
LINE = st.tuples(
    st.sampled_from(["stdout", "stderr"]),
    st.sampled_from([*JAVA, "noise 1", "DEBUG x", "ok"]),
    st.integers(0, 2),  # how far the stamp moves on: 0 shares the previous one
)
CONFIGS = [
    {"multiline": "java"},
    {"exclude": "^noise"},
    {"multiline": "java", "exclude": "^noise", "parser": "json", "redact": ["email"]},
    {"multiline": "java", "rate_limit": {"lines_per_second": 1e9, "mode": "drop"}},
    {"parser": "json", "redact": ["email"]},  # holds nothing: the reader advances
]


def _batches(script: list[list[tuple[str, str, int]]]) -> list[list[Record]]:
    m = meta()
    i = 0
    out = []
    for batch in script:
        b = []
        for stream, message, step in batch:
            i += step
            b.append(Record.log(stamp(i), m, stream, message, False))
        out.append(b)
    return out


async def _positions(
    settings_: dict[str, Any], script: list[list[tuple[str, str, int]]], reader_advances: bool
) -> list[dict[str, Position]]:
    """The read positions after each batch and at the end, a real reader emitting the
    batches through the container's chain; ``reader_advances``: as before, the reader
    advancing them too (what the driver then overwrites)."""
    steps: list[Any] = []
    seen: list[dict[str, Position]] = []
    for b in _batches(script):
        steps += [b, lambda reader: seen.append(dict(reader.followers.positions[CID]))]
    source = ScriptedSource([*steps, StreamEnd.STOPPED])
    h = Harness(source)
    h.followers.processing = Processing(ProcessingConfig.model_validate(settings_))
    with pytest.MonkeyPatch.context() as mp:
        if reader_advances:
            mp.setattr(ChainDriver, "sets_positions", property(lambda self: False))
        reader = await h.run(source)
        assert reader.chain is not None
    return [*seen, dict(h.followers.positions[CID])]


@settings(max_examples=300, deadline=None)
@given(
    settings_=st.sampled_from(CONFIGS),
    script=st.lists(st.lists(LINE, min_size=1, max_size=8), min_size=1, max_size=6),
)
async def test_the_drivers_positions_are_those_the_reader_would_have_made(
    settings_: dict[str, Any], script: list[list[tuple[str, str, int]]]
) -> None:
    assert await _positions(settings_, script, False) == await _positions(settings_, script, True)
