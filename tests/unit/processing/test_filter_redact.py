"""Filtering (positions move past dropped lines) and redaction (presets, Luhn, fields,
counts, nothing of a secret left anywhere in the record's JSON)."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.positions import Position, advance
from agent.processing.config import CustomRedaction, ParserConfig
from agent.processing.filter import Filter
from agent.processing.parse import Parse
from agent.processing.redact import Redact, Redactor, luhn
from agent.record import Record
from agent.secrets import MASK
from tests.unit.processing.conftest import meta, records, stamp


def test_include_and_exclude() -> None:
    f = Filter("important|ERROR", "healthz", c := Counter())
    out = f.process(records(["ERROR a", "GET /healthz ERROR", "debug", "important b"]))
    assert [r.message for r in out] == ["ERROR a", "important b"]
    assert c == Counter({"filtered": 2})


def test_dropped_lines_are_accounted_for_by_the_next_kept_line() -> None:
    m = meta()
    ts = stamp(1)
    recs = [
        Record.log(stamp(0), m, "stdout", "keep 0", False),
        Record.log(ts, m, "stdout", "drop 1", False),
        Record.log(ts, m, "stderr", "keep err", False),
        Record.log(ts, m, "stdout", "keep 2", False),  # same stamp as the dropped line
    ]
    f = Filter(None, "^drop")
    out = f.process(recs)
    positions: dict[str, Position] = {}
    advance(positions, out)
    assert positions["stdout"] == Position(ts, 2)  # a restart skips both lines stamped ts
    assert f.settled
    tail = f.process([Record.log(stamp(2), m, "stdout", "drop 3", False)])
    assert tail == [] and not f.settled  # carried until a kept line of its stream


def test_luhn() -> None:
    assert luhn("4111111111111111") and luhn("5500005555555559") and luhn("378282246310005")
    assert not luhn("4111111111111112")


SECRETS = {
    "bearer": [
        ("Authorization: Bearer abc.def-123", "Authorization: Bearer " + MASK),
        (
            "curl -H 'authorization: Basic dXNlcjpwYXNz'",
            "curl -H 'authorization: Basic " + MASK + "'",
        ),
        ('{"Authorization":"token s3cr3t"}', '{"Authorization":"token ' + MASK + '"}'),
        ("sent bearer xyz123== ok", "sent bearer " + MASK + " ok"),
    ],
    "url_password": [
        ("db=postgres://app:hunter2@db:5432/x", "db=postgres://app:" + MASK + "@db:5432/x"),
    ],
    "aws": [
        ("key AKIAIOSFODNN7EXAMPLE used", "key " + MASK + " used"),
        (
            "aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "aws_secret_access_key=" + MASK,
        ),
        (
            '"secretAccessKey": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"',
            '"secretAccessKey": "' + MASK + '"',
        ),
    ],
    "jwt": [
        (
            "t=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
            "t=" + MASK,
        ),
    ],
    "card": [
        ("paid with 4111 1111 1111 1111 ok", "paid with " + MASK + " ok"),
        ("card=5500-0055-5555-5559", "card=" + MASK),
        ("order 4111111111111112 (not luhn)", "order 4111111111111112 (not luhn)"),
        ("ts 2026-01-01 10:00:00.123456", "ts 2026-01-01 10:00:00.123456"),
    ],
    "email": [("mail ops@example.co.uk now", "mail " + MASK + " now")],
}


@pytest.mark.parametrize(
    ("preset", "text", "want"), [(p, t, w) for p, cases in SECRETS.items() for t, w in cases]
)
def test_presets(preset: str, text: str, want: str) -> None:
    r = Redactor([preset], counters=(c := Counter()))
    assert r.text(text) == want
    assert (c["redacted." + preset] > 0) == (text != want)


def test_counts_per_preset_and_nothing_else_touched() -> None:
    r = Redactor(["bearer", "email", "card"], counters=(c := Counter()))
    text = "a@b.io and c@d.io paid 4111111111111111 with Bearer tok"
    assert r.text(text) == f"{MASK} and {MASK} paid {MASK} with Bearer {MASK}"
    assert c == Counter({"redacted.email": 2, "redacted.card": 1, "redacted.bearer": 1})
    assert r.text("nothing here") == "nothing here"


def test_custom_redaction_with_groups() -> None:
    r = Redactor(
        ["ssn"],
        {"ssn": CustomRedaction(pattern=r"\b(\d{3})-\d\d-\d{4}\b", replacement=r"\1-XX-XXXX")},
        c := Counter(),
    )
    assert r.text("ssn 123-45-6789") == "ssn 123-XX-XXXX" and c["redacted.ssn"] == 1


def test_message_and_parsed_fields_are_redacted_before_anything_sees_them() -> None:
    parse = Parse(ParserConfig(type="json"))
    redact = Redact(["bearer", "email", "aws", "card", "jwt", "url_password"])
    secrets = ["hunter2", "a@b.io", "AKIAIOSFODNN7EXAMPLE", "4111111111111111", "s3cr3tT0k"]
    msg = (
        '{"user":"a@b.io","nested":{"url":"https://u:hunter2@h/x","cards":["4111111111111111"]},'
        '"authorization":"Bearer s3cr3tT0k","k":"AKIAIOSFODNN7EXAMPLE"}'
    )
    escaped = '{"mail":"x\\u0040y.org","auth":"Bearer s3cr3tT0k"}'
    out = redact.process(parse.process(records([msg, escaped, "plain a@b.io"])))
    for r in out:
        data = r.json()
        assert all(s.encode() not in data for s in [*secrets, "x@y.org"]), data
    assert out[0].fields["nested"]["url"] == f"https://u:{MASK}@h/x"
    assert out[1].fields["mail"] == MASK


def test_key_named_secrets_in_fields() -> None:
    stage = Redact(["bearer", "aws"], always_fields=True)
    r = records(["x"])[0]
    from agent.processing.span import extra_of

    extra_of(r).fields = {
        "authorization": "Basic dXNlcjpwYXNz",
        "aws_secret_access_key": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "other": "fine",
    }
    (r,) = stage.process([r])
    assert r.fields == {
        "authorization": "Basic " + MASK,
        "aws_secret_access_key": MASK,
        "other": "fine",
    }


# Lines a batch may hold: each preset's secrets, text that only looks like one (a gate
# passes, the pattern finds nothing), escaped JSON, JSON with fields, non-ASCII, CRs.
_POOL = [
    *(text for cases in SECRETS.values() for text, _ in cases),
    "plain line 42",
    "",
    "user@localhost said hi",
    "see https://example.org/x?a=1",
    "secret santa",
    "Bearer",
    "eyJ alone",
    "ids 1234567890123 and 1234-5678-9012-3456",
    '{"level":"info","msg":"c0 xxxx","seq":1000000001}',
    '{"mail":"x\\u0040y.org","auth":"Bearer s3cr3tT0k"}',
    '{"url":"postgres://a:b@h/db","n":4111111111111111}',
    "Kelvin \u212a and \u0130stanbul AUTHORIZATION: Basic Zm9vOmJhcg==",
    "caf\u00e9 line\r",
]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from(_POOL), min_size=1, max_size=30),
    st.lists(st.sampled_from(["bearer", "url_password", "aws", "jwt", "card", "email"])),
    st.booleans(),
)
def test_a_batch_is_redacted_as_its_lines_one_by_one(
    lines: list[str], presets: list[str], parsed: bool
) -> None:
    """The batch's one look (``Redactor.candidates`` on its joined messages) changes
    nothing: each record comes out as it does alone, counters equal."""
    parse = Parse(ParserConfig(type="json"))

    def made() -> list[Record]:
        rs = records(lines)
        return parse.process(rs) if parsed else rs

    batch_counters: Counter[str] = Counter()
    one_counters: Counter[str] = Counter()
    together = Redact(presets, counters=batch_counters).process(made())
    alone_stage = Redact(presets, counters=one_counters)
    alone = [alone_stage.process([r])[0] for r in made()]
    assert [r.json() for r in together] == [r.json() for r in alone]
    assert batch_counters == one_counters


def test_a_batch_with_nothing_to_mask_is_left_alone() -> None:
    rs = records(['{"level":"info","msg":"c0 xxxx","seq":1000000001}', "plain 42"])
    encoded = [r.json() for r in rs]
    out = Redact(["bearer", "url_password", "aws", "jwt", "card", "email"]).process(rs)
    assert out is rs and [r._json for r in out] == encoded
    assert [r.extra for r in out] == [None, None]


def test_candidates_are_the_presets_whose_gate_passes() -> None:
    r = Redactor(["email", "card", "bearer"])
    assert r.candidates("nothing") == ()
    assert r.candidates("a@b.io and 4111 1111 1111 1111, Bearer x") == ("bearer", "card", "email")
    assert r.candidates("a@b.io\n4111 1111 1111 1111") == ("card", "email")
    # a card's digits split over two lines of a batch are not a card number
    assert r.candidates("4111 1111 1111\n1111") == ()
    assert r.candidates("x", presets=("email",)) == ()


def test_escapes_are_looked_through_in_a_batch_with_nothing_else() -> None:
    rs = records(['{"mail":"x\\u0040y.org"}', "plain"])
    out = Redact(["email"], counters=(c := Counter())).process(rs)
    assert b"x@y.org" not in out[0].json() and out[0].fields == {"mail": MASK}
    assert out[1].extra is None and c == Counter({"redacted.email": 1})
