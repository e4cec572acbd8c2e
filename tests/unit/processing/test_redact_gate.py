"""The redaction stage's C batch gate (agent/_speedups.c ``redact_gate``) against the
Python one (``Redactor.candidates`` on the joined messages): the same presets and the same
escape test for any batch, hence the same records out of the stage."""

from __future__ import annotations

from collections import Counter
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import speedups
from agent.processing import redact as redact_module
from agent.processing.redact import PRESETS, Redact, Redactor
from agent.record import Extra, Record
from tests.unit.processing.conftest import records


@pytest.fixture(scope="module")
def gate(built: Any) -> Any:
    return built.redact_gate


PIECES = st.sampled_from(
    [
        "bearer",
        "Bearer ",
        "BEARE",
        "bEaReR",
        "authorization",
        "AUTHORIZATION: ",
        "Authorizatio",
        "secret",
        "SeCrEt",
        "secre",
        "AKIA",
        "ASIA",
        "ABIA",
        "ACCA",
        "A3T",
        "A3",
        "AKI",
        "eyJ",
        "ey",
        "J",
        "://",
        ":/",
        "@",
        "\\",
        "\\u0040",
        "123456",
        "1234 5678-9012 3",
        "4111111111111111",
        "999999999999",
        " ",
        "-",
        "\n",
        "\r",
        "x",
        "é",
        "\u212a",  # the Kelvin sign: lowercases to k
        "\u0130",  # I with a dot: lowercases to two characters
    ]
)
MESSAGE = st.one_of(
    st.lists(PIECES, max_size=8).map("".join),
    st.text(alphabet="0123456789 -ab@:/\\eyJAKIS3TCx", max_size=30),
    st.none(),
)


def _python(batch: list[Record], presets: tuple[str, ...]) -> tuple[tuple[str, ...], bool]:
    joined = "\n".join([r.message or "" for r in batch])
    return Redactor(presets).candidates(joined), "\\" in joined


def _records(messages: list[str | None]) -> list[Record]:
    recs = records(["" if m is None else m for m in messages])
    for r, m in zip(recs, messages, strict=True):
        r.message = m  # type: ignore[assignment]  (None: counted as an empty message)
    return recs


@settings(max_examples=500, deadline=None)
@given(
    messages=st.lists(MESSAGE, max_size=12),
    presets=st.sets(st.sampled_from(PRESETS)).map(lambda s: tuple(p for p in PRESETS if p in s)),
)
def test_the_c_gate_finds_what_the_python_gate_finds(
    gate: Any, messages: list[str | None], presets: tuple[str, ...]
) -> None:
    batch = _records(messages)
    bits = gate(batch)
    want = _python(batch, presets)
    if bits is None:
        assert not all(m is None or m.isascii() for m in messages)
        return
    got = (
        tuple(p for p in presets if bits & redact_module._GATE_BITS[p]),
        bool(bits & redact_module._GATE_ESCAPED),
    )
    assert got == want


def test_the_c_gate_hands_non_ascii_batches_back(gate: Any) -> None:
    assert gate(records(["plain", "\u212aey"])) is None
    assert gate(records(["plain", "x"])) == 0
    assert gate(records(["a bearer x", "b@c", "http://h"])) == 1 | 2 | 32


MIXED = st.lists(
    st.one_of(
        MESSAGE.filter(lambda m: m is not None),
        st.sampled_from(
            [
                '{"level":"info","msg":"to a\\u0040b.co","authorization":"Basic abc"}',
                '{"msg":"card 4111 1111 1111 1111","token":"eyJhbGc.eyJzdWI.sig"}',
                '{"url":"https://u:pw@h/x","k":"AKIAABCDEFGHIJKLMNOP"}',
                '{"level":"info","msg":"c0 xxxxxxxx","seq":1000000001}',
            ]
        ),
    ),
    max_size=10,
)


@settings(max_examples=200, deadline=None)
@given(messages=MIXED, parsed=st.booleans())
def test_the_stage_gives_the_same_records_either_way(
    gate: Any, messages: list[str], parsed: bool
) -> None:
    out = []
    for g in (gate, None):
        recs = records(messages)
        if parsed:
            for r in recs:
                if r.message[:1] == "{":
                    try:
                        fields = orjson.loads(r.message)
                    except orjson.JSONDecodeError:
                        continue
                    if isinstance(fields, dict):
                        x = r.extra = Extra()
                        x.fields = fields
        counters: Counter[str] = Counter()
        stage = Redact(list(PRESETS), counters=counters)
        stage._gate = g
        done = stage.process(recs)
        out.append(
            (
                [(r.message, r.extra.fields if r.extra else None) for r in done],
                counters,
                b"".join(r.json() + b"\n" for r in done),
            )
        )
    assert out[0] == out[1]


def test_the_stage_uses_the_c_gate_when_built(gate: Any) -> None:
    if speedups.speedups is None:
        pytest.skip("the pure-Python run: the C gate is tested above")
    assert Redact(["email"])._gate is gate
