"""The http exporter's request bodies, parsed the way each backend parses them, its config
(validation, masking of secrets) and its helpers. No network."""

from __future__ import annotations

import email.utils
import gzip
import random
import time
import zlib
from pathlib import Path
from typing import Any

import orjson
import pytest

from agent.cli import main as cli_main
from agent.config import ConfigError, parse
from agent.record import ContainerMeta, Record, encode_ndjson, format_timestamp_ns
from agent.retry import retry_after_seconds
from agent.secrets import masked_url
from exporters._compress import gzip_bytes
from exporters.http.auth import expand_env
from exporters.http.config import HttpConfig
from exporters.http.exporter import HttpExporter
from exporters.http.formats import make_encoder, ts_to_ns, ts_to_ns_text
from exporters.http.formats.elasticsearch import ElasticsearchEncoder, bulk_outcome, read_bulk
from exporters.http.formats.loki import LokiEncoder, label_name
from exporters.http.formats.ndjson import NdjsonEncoder
from exporters.http.formats.otlp import OtlpEncoder, split_image

WEB = ContainerMeta(
    "a" * 64,
    "/web",
    "registry:5000/shop/web:1.4@sha256:abc",
    {"com.docker.compose.project": "shop", "com.docker.compose.service": "web", "tier": "front"},
    "node-1",
)
DB = ContainerMeta("b" * 64, "db", "postgres", {}, "node-1")
T0 = 1_795_824_000_000_000_000  # 2026-11-28T00:00:00Z


def ts(offset_ns: int) -> str:
    return format_timestamp_ns(T0 + offset_ns)


def sample() -> list[Record]:
    return [
        Record.log(ts(3), WEB, "stdout", "third by time", False),
        Record.log(ts(1), WEB, "stdout", "first by time", False),
        Record.log(ts(2), WEB, "stderr", "an error", True),
        Record.log(ts(5), DB, "stdout", '{"level":"info","msg":"ready"}', False),
        Record.event(ts(4), WEB, "die", {"exitCode": "1", "name": "web"}),
        Record.stats_sample(ts(6), DB, {"cpu_percent": 1.5, "pids": 3, "network": {}}),
    ]


def everything(encoder: Any, records: list[Record]) -> bytes:
    encoded = encoder.encode(records)
    return encoder.assemble(encoded, range(len(records)))


# -- timestamps ------------------------------------------------------------------------------


def test_timestamps_to_nanoseconds() -> None:
    assert ts_to_ns("2026-11-28T00:00:00.000000001Z") == T0 + 1
    assert ts_to_ns("2026-11-28T01:00:00.5+01:00") == T0 + 500_000_000
    assert ts_to_ns("2026-11-28T00:00:00Z") == T0
    assert ts_to_ns(ts(123_456_789)) == T0 + 123_456_789
    for stamp in ("2026-11-28T00:00:00.000000001Z", "2026-11-28T01:00:00.5+01:00", ts(7), ts(7)):
        assert ts_to_ns_text(stamp) == str(ts_to_ns(stamp))  # twice: the cached path too


# -- ndjson ----------------------------------------------------------------------------------


def test_ndjson_is_the_file_format() -> None:
    records = sample()
    assert everything(NdjsonEncoder(), records) == encode_ndjson(records)


# -- loki ------------------------------------------------------------------------------------


def test_loki_push_body_streams_labels_and_order() -> None:
    body = orjson.loads(everything(LokiEncoder(), sample()))
    streams = {tuple(sorted(s["stream"].items())): s["values"] for s in body["streams"]}
    web_out = (
        ("container_name", "web"),
        ("host", "node-1"),
        ("project", "shop"),
        ("service", "web"),
        ("stream", "stdout"),
    )
    # Entries of a stream sorted by time, as Loki requires; timestamps are ns strings.
    assert streams[web_out] == [[str(T0 + 1), "first by time"], [str(T0 + 3), "third by time"]]
    web_err = tuple(sorted({**dict(web_out), "stream": "stderr"}.items()))
    assert streams[web_err] == [[str(T0 + 2), "an error"]]
    # A field without a value is no label (no compose project on db, no stream on events).
    db_out = (("container_name", "db"), ("host", "node-1"), ("stream", "stdout"))
    assert streams[db_out] == [[str(T0 + 5), '{"level":"info","msg":"ready"}']]
    web_events = tuple(p for p in web_out if p[0] != "stream")
    [[stamp, line]] = streams[web_events]
    assert stamp == str(T0 + 4)
    assert orjson.loads(line)["action"] == "die"  # events are sent as their JSON
    assert len(streams) == 5  # the stats record is alone in the db stream without `stream`


def test_loki_labels_and_line_format_are_configurable() -> None:
    enc = LokiEncoder(["container_id", "label.com.docker.compose.project", "kind"], "json")
    body = orjson.loads(everything(enc, sample()[:1]))
    [stream] = body["streams"]
    assert stream["stream"] == {
        "container_id": WEB.id,
        "com_docker_compose_project": "shop",
        "kind": "log",
    }
    assert orjson.loads(stream["values"][0][1])["message"] == "third by time"
    assert label_name("label.9lives") == "_9lives"
    with pytest.raises(ValueError, match="unknown label field"):
        LokiEncoder(["message"])


def test_loki_labels_are_validated_in_the_config() -> None:
    with pytest.raises(ConfigError, match=r"exporters\.out\.loki\.labels.*unknown label field"):
        parse(
            {
                "exporters": {
                    "out": {"type": "http", "url": "http://x", "loki": {"labels": ["message"]}}
                }
            }
        )


# -- elasticsearch ---------------------------------------------------------------------------


def test_bulk_body_is_action_source_pairs() -> None:
    records = sample()
    lines = everything(ElasticsearchEncoder(), records).split(b"\n")
    assert lines[-1] == b""  # newline-terminated, as _bulk requires
    pairs = [
        (orjson.loads(a), orjson.loads(s))
        for a, s in zip(lines[0:-1:2], lines[1:-1:2], strict=True)
    ]
    assert len(pairs) == len(records)
    for (action, source), rec in zip(pairs, records, strict=True):
        assert action == {"create": {"_index": "container-logs-2026.11.28"}}
        assert source["@timestamp"] == rec.timestamp
        assert source == {"@timestamp": rec.timestamp, **rec.to_dict()}


def test_bulk_index_pattern_uses_each_records_date() -> None:
    enc = ElasticsearchEncoder("logs-%Y-%m-%d", "index")
    before = Record.log("2026-11-27T23:59:59.999999999Z", WEB, "stdout", "a", False)
    after = Record.log("2026-11-28T00:00:00.000000000Z", WEB, "stdout", "b", False)
    lines = everything(enc, [before, after]).split(b"\n")
    assert orjson.loads(lines[0]) == {"index": {"_index": "logs-2026-11-27"}}
    assert orjson.loads(lines[2]) == {"index": {"_index": "logs-2026-11-28"}}
    plain = ElasticsearchEncoder("logs-plain")
    assert orjson.loads(everything(plain, [before]).split(b"\n")[0]) == {
        "create": {"_index": "logs-plain"}
    }


def test_bulk_answer_items_sorted_into_ok_retry_and_dead() -> None:
    answer = orjson.dumps(
        {
            "took": 3,
            "errors": True,
            "items": [
                {"create": {"status": 201}},
                {"create": {"status": 429, "error": {"type": "es_rejected_execution_exception"}}},
                {"create": {"status": 400, "error": {"type": "mapper_parsing_exception"}}},
                {"create": {"status": 503}},
            ],
        }
    )
    retry, dead = bulk_outcome(answer, [10, 11, 12, 13])  # type: ignore[misc]
    assert retry == [11, 13]
    assert [(i, s) for i, s, _ in dead] == [(12, 400)]
    assert "mapper_parsing_exception" in dead[0][2]
    assert bulk_outcome(b'{"errors":false,"items":[]}', [1, 2]) == ([], [])
    assert bulk_outcome(b"not json", [1]) is None
    assert bulk_outcome(b'{"errors":true,"items":[]}', [1]) is None  # count mismatch


def bulk_ids(encoder: Any, records: list[Record], deliver: bool = True) -> list[str]:
    """The ``_id`` of each record's action line; ``deliver``: the send went through."""
    encoded = encoder.encode(records)
    lines = encoder.assemble(encoded, range(len(records))).split(b"\n")[0:-1:2]
    if deliver and encoded.on_delivered is not None:
        encoded.on_delivered()
    return [next(iter(orjson.loads(line).values())).get("_id") for line in lines]


def test_bulk_ids_are_deterministic() -> None:
    ids = bulk_ids(ElasticsearchEncoder(id="deterministic"), sample())
    assert len(set(ids)) == len(ids)
    # container id, stream, the stamp, the crc32 of the message
    assert ids[0] == f"{WEB.id[:16]}o{ts(3)}{zlib.crc32(b'third by time'):08x}"
    assert ids[2].startswith(f"{WEB.id[:16]}e{ts(2)}")
    assert ids[4].startswith(f"{WEB.id[:16]}v{ts(4)}")  # an event
    assert ids[5].startswith(f"{DB.id[:16]}s{ts(6)}")  # a stats sample
    # The same records read again (new objects, a new encoder: after a restart).
    assert bulk_ids(ElasticsearchEncoder(id="deterministic"), sample()) == ids
    # json-file's form of a stamp (zeros trimmed) is the same instant, the same id.
    api = Record.log("2026-11-28T00:00:00.100000000Z", WEB, "stdout", "x", False)
    jsonfile = Record.log("2026-11-28T00:00:00.1Z", WEB, "stdout", "x", False)
    enc = ElasticsearchEncoder(id="deterministic")
    assert bulk_ids(enc, [api]) == bulk_ids(ElasticsearchEncoder(id="deterministic"), [jsonfile])
    # Another message, stream or container under the same stamp: another id.
    others = [
        Record.log(ts(3), WEB, "stdout", "third by time!", False),
        Record.log(ts(3), WEB, "stderr", "third by time", False),
        Record.log(ts(3), DB, "stdout", "third by time", False),
    ]
    assert ids[0] not in bulk_ids(ElasticsearchEncoder(id="deterministic"), others)
    # id: none (the encoder's default): the backend makes them.
    assert bulk_ids(ElasticsearchEncoder(), sample()) == [None] * 6


def test_bulk_ids_of_identical_lines() -> None:
    # Lines of one stream with the same stamp and message (e.g. blank lines in a burst)
    # are told apart by their occurrence.
    same = [Record.log(ts(7), WEB, "stdout", "dup", False) for _ in range(3)]
    same += [Record.log(ts(7), WEB, "stdout", "other", False)]
    same += [Record.log(ts(7), WEB, "stderr", "dup", False)]
    whole = bulk_ids(ElasticsearchEncoder(id="deterministic"), same)
    assert len(set(whole)) == 5
    assert whole[1:3] == [whole[0] + ".1", whole[0] + ".2"]
    # Split across sends in one run: the counts continue, the same ids.
    enc = ElasticsearchEncoder(id="deterministic")
    assert bulk_ids(enc, same[:2]) + bulk_ids(enc, same[2:]) == whole
    # A send that did not go through is sent again by the pipeline: the same ids again.
    enc = ElasticsearchEncoder(id="deterministic")
    bulk_ids(enc, same[:2])
    assert bulk_ids(enc, same[2:], deliver=False) == whole[2:]
    assert bulk_ids(enc, same[2:]) == whole[2:]
    enc = ElasticsearchEncoder(id="deterministic")
    assert bulk_ids(enc, [same[0], same[3]]) == [whole[0], whole[3]]
    assert bulk_ids(enc, [same[1]], deliver=False) == bulk_ids(enc, [same[1]]) == [whole[1]]
    # The documented limit: after a restart between two identical lines, the second
    # counts from 0 and takes the first one's id.
    assert bulk_ids(ElasticsearchEncoder(id="deterministic"), same[1:2]) == whole[:1]


def test_bulk_id_option_in_the_config() -> None:
    cfg = parse(http(format="elasticsearch")).exporters["out"]
    assert isinstance(cfg, HttpConfig) and cfg.elasticsearch.id == "deterministic"
    assert bulk_ids(make_encoder(cfg), sample()[:1])[0] is not None
    cfg = parse(http(format="elasticsearch", elasticsearch={"id": "none"})).exporters["out"]
    assert bulk_ids(make_encoder(cfg), sample()[:1]) == [None]
    with pytest.raises(ConfigError, match=r"exporters\.out\.elasticsearch\.id"):
        parse(http(format="elasticsearch", elasticsearch={"id": "random"}))


def test_bulk_answer_409_means_already_stored() -> None:
    answer = orjson.dumps(
        {
            "errors": True,
            "items": [
                {"create": {"_id": "a", "status": 201}},
                {
                    "create": {
                        "_id": "b",
                        "status": 409,
                        "error": {"type": "version_conflict_engine_exception"},
                    }
                },
                {"create": {"_id": "c", "status": 429}},
                {"create": {"_id": "d", "status": 400, "error": {"type": "mapper_parsing"}}},
            ],
        }
    )
    read = read_bulk(answer, [4, 5, 6, 7])
    assert read is not None
    assert (read.present, read.again, [i for i, _, _ in read.dead]) == ([5], [6], [7])
    assert bulk_outcome(answer, [4, 5, 6, 7]) == (read.again, read.dead)


# -- otlp ------------------------------------------------------------------------------------


def attrs(kvs: list[dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for kv in kvs:
        (_kind, value), *_ = kv["value"].items()
        out[kv["key"]] = value
    return out


def test_otlp_logs_request() -> None:
    body = orjson.loads(everything(OtlpEncoder(["tier"]), sample()))
    resources = body["resourceLogs"]
    assert len(resources) == 2  # one per container
    web = resources[0]
    assert attrs(web["resource"]["attributes"]) == {
        "container.id": WEB.id,
        "container.name": "web",
        "container.image.name": "registry:5000/shop/web",
        "container.image.tags": {"values": [{"stringValue": "1.4"}]},
        "host.name": "node-1",
        "docker.compose.project": "shop",
        "docker.compose.service": "web",
        "container.label.tier": "front",
    }
    [scope] = web["scopeLogs"]
    assert scope["scope"]["name"] == "container-agent"
    logs = scope["logRecords"]
    assert [r["body"] for r in logs[:3]] == [
        {"stringValue": "third by time"},
        {"stringValue": "first by time"},
        {"stringValue": "an error"},
    ]
    first = logs[0]
    assert first["timeUnixNano"] == str(T0 + 3)  # int64 as a decimal string
    assert isinstance(first["observedTimeUnixNano"], str)
    assert int(first["observedTimeUnixNano"]) > T0 - 10**18
    assert "severityText" not in first and "severityNumber" not in first
    assert attrs(first["attributes"]) == {"log.iostream": "stdout"}
    assert attrs(logs[2]["attributes"]) == {
        "log.iostream": "stderr",
        "container_agent.truncated": True,
    }
    event = logs[3]
    assert event["body"] == {"stringValue": "die"}
    assert attrs(event["attributes"]) == {
        "event.name": "container.die",
        "docker.event.exitCode": "1",
        "docker.event.name": "web",
    }
    db = resources[1]
    assert attrs(db["resource"]["attributes"])["container.image.name"] == "postgres"
    assert "container.image.tags" not in attrs(db["resource"]["attributes"])
    stats = db["scopeLogs"][0]["logRecords"][1]
    assert attrs(stats["attributes"]) == {"event.name": "container.stats"}
    values = {kv["key"]: kv["value"] for kv in stats["body"]["kvlistValue"]["values"]}
    assert values["cpu_percent"] == {"doubleValue": 1.5}
    assert values["pids"] == {"intValue": "3"}


def test_image_reference_split() -> None:
    assert split_image("nginx:1.27") == ("nginx", "1.27")
    assert split_image("nginx") == ("nginx", None)
    assert split_image("localhost:5000/app") == ("localhost:5000/app", None)
    assert split_image("app@sha256:beef") == ("app", None)


# -- splitting into requests -----------------------------------------------------------------


@pytest.mark.parametrize(
    "encoder",
    [NdjsonEncoder(), LokiEncoder(), ElasticsearchEncoder(), OtlpEncoder()],
    ids=["ndjson", "loki", "elasticsearch", "otlp"],
)
def test_split_honours_records_and_bytes(encoder: Any, seed: int) -> None:
    rng = random.Random(seed + 7)
    metas = [ContainerMeta(f"{i:064x}", f"c{i}", "img:1", {}, "h") for i in range(5)]
    records = [
        Record.log(
            ts(i),
            rng.choice(metas),
            rng.choice(["stdout", "stderr"]),
            "x" * rng.randrange(1, 900),
            False,
        )
        for i in range(3000)
    ]
    encoded = encoder.encode(records)
    runs = encoded.split(max_records=400, max_bytes=64 * 1024)
    note = f"seed={seed}"
    assert [i for run in runs for i in run] == list(range(len(records))), note  # all, in order
    for run in runs:
        assert len(run) <= 400, note
        body = encoder.assemble(encoded, run)
        assert len(body) <= encoded.size(run) <= 64 * 1024, note
        orjson.loads(body) if encoder.content_type == "application/json" else None
    # A record larger than max_bytes goes alone.
    big = [Record.log(ts(0), metas[0], "stdout", "y" * 5000, False), *records[:3]]
    runs = encoder.encode(big).split(max_records=10, max_bytes=2048)
    assert list(runs[0]) == [0], note


# -- config ----------------------------------------------------------------------------------


def http(**options: Any) -> dict[str, Any]:
    return {"exporters": {"out": {"type": "http", "url": "https://logs.example:8443", **options}}}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"url": "ftp://x"}, "exporters.out.url"),
        ({"url": "http://"}, "exporters.out.url"),
        ({"format": "syslog"}, "exporters.out.format"),
        ({"auth": {"bearer_token": "a", "bearer_token_env": "B"}}, "not both"),
        ({"auth": {"bearer_token": "a", "basic": {"user": "u", "password": "p"}}}, "not both"),
        ({"auth": {"basic": {"user": "u"}}}, "exactly one of password"),
        ({"auth": {"basic": {"password": "p"}}}, "needs a user"),
        ({"url": "http://u:p@x", "auth": {"bearer_token": "t"}}, "credentials in the url"),
        ({"headers": {"Authorization": "x"}, "auth": {"bearer_token": "t"}}, "Authorization"),
        ({"batch": {"max_records": 0}}, "exporters.out.batch.max_records"),
        ({"retries": {}}, "exporters.out.retries: unknown key"),
    ],
)
def test_config_errors_name_the_key(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        parse(http(**options))


def test_config_defaults() -> None:
    cfg = parse(http()).exporters["out"]
    assert isinstance(cfg, HttpConfig)
    assert cfg.format == "ndjson" and cfg.compression == "gzip"
    assert (cfg.batch.max_records, cfg.batch.max_bytes, cfg.batch.max_seconds) == (
        1000,
        1024 * 1024,
        1.0,
    )
    assert (cfg.retry.initial_backoff_seconds, cfg.retry.max_backoff_seconds) == (0.5, 30.0)
    assert cfg.tls.verify is True and cfg.timeout_seconds == 10.0
    assert cfg.loki.labels == ["container_name", "stream", "host", "project", "service"]
    assert cfg.elasticsearch.index == "container-logs-%Y.%m.%d"


def test_check_config_masks_secrets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(
        """
exporters:
  loki:
    type: http
    format: loki
    url: https://tenant:url-secret-1@logs.example/loki/api/v1/push
    headers: {X-Scope-OrgID: team-a, X-Api-Key: header-secret-2}
  es:
    type: http
    format: elasticsearch
    url: http://es:9200
    auth: {basic: {user: elastic, password: basic-secret-3}}
  otel:
    type: http
    format: otlp
    url: http://otel:4318
    auth: {bearer_token: bearer-secret-4}
"""
    )
    assert cli_main(["check-config", str(path)]) == 0
    out, err = capsys.readouterr()
    for secret in ("url-secret-1", "header-secret-2", "basic-secret-3", "bearer-secret-4"):
        assert secret not in out and secret not in err
    dumped = orjson.loads(out)["exporters"]
    assert dumped["loki"]["headers"] == {"X-Scope-OrgID": "team-a", "X-Api-Key": "**********"}
    assert dumped["loki"]["url"] == "https://tenant:**********@logs.example/loki/api/v1/push"
    assert dumped["es"]["auth"]["basic"] == {
        "user": "elastic",
        "password": "**********",
        "password_env": None,
    }
    assert dumped["otel"]["auth"]["bearer_token"] == "**********"


def test_check_config_masks_every_header_and_query_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Secret unless known harmless: header names that do not look secret, and url query
    # values, are masked too.
    secrets = {
        "X-Access-Key": "access-secret-1",
        "X-Private-Key": "private-secret-2",
        "X-Session-Id": "session-secret-3",
        "Ocp-Apim-Subscription-Key": "apim-secret-4",
        "X-Honeycomb-Team": "honeycomb-secret-5",
        "X-Insert-Key": "insert-secret-6",
    }
    query = {"api_key": "query-secret-7", "dd-api-key": "query-secret-8", "token": "q-secret-9"}
    headers = ", ".join(f"{k}: {v}" for k, v in secrets.items())
    url = "https://intake.example/v1/input?" + "&".join(f"{k}={v}" for k, v in query.items())
    path = tmp_path / "agent.yaml"
    path.write_text(
        f"""
exporters:
  out:
    type: http
    url: "{url}"
    headers: {{{headers}, X-Scope-OrgID: team-a, Content-Type: application/json}}
"""
    )
    assert cli_main(["check-config", str(path)]) == 0
    out, err = capsys.readouterr()
    for secret in [*secrets.values(), *query.values()]:
        assert secret not in out and secret not in err
    dumped = orjson.loads(out)["exporters"]["out"]
    assert dumped["headers"] == {
        **{k: "**********" for k in secrets},
        "X-Scope-OrgID": "team-a",
        "Content-Type": "application/json",
    }
    assert dumped["url"] == (
        "https://intake.example/v1/input?api_key=**********&dd-api-key=**********&token=**********"
    )
    cfg = parse(http(url=url, headers=secrets)).exporters["out"]
    shown = repr(cfg) + str(cfg) + HttpExporter("out", cfg).target()
    for secret in [*secrets.values(), *query.values()]:
        assert secret not in shown


def test_target_and_repr_hide_secrets() -> None:
    cfg = parse(http(url="https://u:pw-secret@logs.example/x?key=q-secret")).exporters["out"]
    exp = HttpExporter("out", cfg)
    assert exp.target() == "ndjson:https://logs.example/x"  # no credentials, no query
    assert masked_url("https://u:p@h/x") == "https://u:**********@h/x"
    cfg = parse(http(auth={"bearer_token": "tok-secret"})).exporters["out"]
    assert "tok-secret" not in repr(cfg) and "tok-secret" not in str(cfg)


# -- helpers ---------------------------------------------------------------------------------


def test_retry_after_seconds_and_dates() -> None:
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds(" 0 ") == 0.0
    now = time.time()
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert 28 <= retry_after_seconds(date, now=now) <= 31  # type: ignore[operator]
    past = email.utils.formatdate(now - 30, usegmt=True)
    assert retry_after_seconds(past, now=now) == 0.0
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds(None) is None


def test_env_references_in_headers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CA_TEST_TENANT", "team-a")
    assert expand_env("org-${CA_TEST_TENANT}", "h") == "org-team-a"
    monkeypatch.delenv("CA_TEST_TENANT")
    with pytest.raises(ValueError, match="CA_TEST_TENANT is not set"):
        expand_env("${CA_TEST_TENANT}", "h")


@pytest.mark.parametrize("fast", [True, False], ids=["isal-if-installed", "zlib"])
@pytest.mark.parametrize("level", [1, 5, 9])
def test_gzip_bodies_decode(fast: bool, level: int) -> None:
    body = b"".join(b'{"n":%d,"msg":"request completed"}\n' % i for i in range(5000))
    packed = gzip_bytes(body, level, fast=fast)
    assert gzip.decompress(packed) == body and len(packed) < len(body) // 5


def test_a_level_found_by_processing_is_otlp_severity_and_can_be_a_loki_label() -> None:
    from agent.record import Extra

    m = ContainerMeta("c" * 64, "/web", "img", {}, "h")
    plain = Record.log("2026-11-28T10:11:45.589604852Z", m, "stdout", "ok", False)
    err = Record.log("2026-11-28T10:11:46.000000000Z", m, "stderr", "boom", False)
    err.extra = Extra()
    err.extra.level = "error"
    enc = OtlpEncoder()
    body = orjson.loads(enc.assemble(enc.encode([plain, err]), range(2)))
    logs = body["resourceLogs"][0]["scopeLogs"][0]["logRecords"]
    assert "severityNumber" not in logs[0]
    assert (logs[1]["severityNumber"], logs[1]["severityText"]) == (17, "ERROR")
    assert [a["key"] for a in logs[1]["attributes"]] == ["log.iostream"]  # not truncated
    loki = LokiEncoder(["container_name", "level"])
    streams = orjson.loads(loki.assemble(loki.encode([plain, err]), range(2)))["streams"]
    assert sorted(s["stream"].get("level", "-") for s in streams) == ["-", "error"]
