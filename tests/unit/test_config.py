"""Config validation, check-config and the generated reference."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agent import cli
from agent.config import ConfigError, load, parse, reference_markdown
from agent.filters import ContainerFilter
from agent.record import ContainerMeta

ROOT = Path(__file__).resolve().parents[2]


def test_defaults() -> None:
    cfg = parse({})
    assert cfg.exporters["records"].type == "file"
    assert cfg.exporters["records"].path == "./var/records.ndjson"
    assert cfg.logs.max_message_bytes == 1024 * 1024
    assert cfg.exporters["records"].when_full == "block"


def test_files_linger_default_is_the_sources_own() -> None:
    """The declaration repeats the files source's default rather than importing it (an
    agent reading the API does not load that module): the two must not drift apart."""
    from agent.sources.jsonfile.inotify import WAKE_LINGER_SECONDS

    assert parse({}).logs.files_linger_seconds == WAKE_LINGER_SECONDS


def test_engine_host_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:2375")
    assert parse({}).engine.host == "tcp://127.0.0.1:2375"
    monkeypatch.delenv("DOCKER_HOST")
    assert parse({}).engine.host == "unix:///var/run/docker.sock"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"engine": {"hots": "x"}}, "engine.hots: unknown key"),
        (
            {"exporters": {"a": {"type": "kafka"}}},
            "exporters.a.type: unknown exporter type 'kafka'",
        ),
        ({"exporters": {"a": {"path": "x"}}}, "exporters.a.type: required"),
        ({"exporters": {"a": {"type": "file"}}}, "exporters.a.path: Field required"),
        (
            {"exporters": {"a": {"type": "file", "path": "p", "fsync": "maybe"}}},
            "exporters.a.fsync",
        ),
        (
            {"exporters": {"a": {"type": "file", "path": "p", "when_full": "x"}}},
            "exporters.a.when_full",
        ),
        ({"exporters": {}}, "at least one exporter"),
        ({"logs": {"max_message_bytes": "big"}}, "logs.max_message_bytes"),
        ({"containers": {"include": {"name": ["("]}}}, "containers.include.name"),
        ({"containers": {"exclude": {"label": ["=x"]}}}, "has no key"),
        ([1, 2], "top level must be a mapping"),
    ],
)
def test_errors_name_the_key(data: object, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse(data, "f.yaml")
    assert message in str(err.value)
    assert str(err.value).startswith("f.yaml: ")


def test_yaml_errors_and_unreadable_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("exporters:\n  a: [\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:3:1: YAML syntax error"):
        load(bad)
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load(tmp_path / "missing.yaml")
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="cannot read"):
        load(binary)


def test_check_config_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("exporters:\n  out: {type: file, path: /tmp/x.ndjson, fsync: true}\n")
    assert cli.main(["check-config", str(good)]) == 0
    assert '"fsync": true' in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("exporters:\n  out: {type: file, path: 3, nope: 1}\n")
    assert cli.main(["check-config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "exporters.out.nope: unknown key" in err and "Traceback" not in err


def test_filters() -> None:
    m = ContainerMeta("id", "/web-1", "nginx:1", {"team": "a", "tier": "front"}, "h")
    assert ContainerFilter().accepts(m)
    f = ContainerFilter.model_validate({"include": {"name": ["^web"]}})
    assert f.accepts(m)
    assert not ContainerFilter.model_validate({"include": {"image": ["^redis"]}}).accepts(m)
    assert not ContainerFilter.model_validate({"exclude": {"label": ["team=^a$"]}}).accepts(m)
    assert ContainerFilter.model_validate({"exclude": {"label": ["team=b"]}}).accepts(m)
    assert not ContainerFilter.model_validate({"exclude": {"label": ["tier"]}}).accepts(m)


def test_reference_is_generated_from_the_declaration() -> None:
    readme = (ROOT / "docs" / "configuration.md").read_text()
    match = re.search(
        r"<!-- config-reference:start -->\n(.*)<!-- config-reference:end -->", readme, re.S
    )
    assert match, "docs/configuration.md lacks the config reference markers"
    assert match.group(1) == reference_markdown(), "run `make docs` to regenerate it"


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("state_dir: /a\nstate_dir: /b\n", ":2:1: duplicate key 'state_dir' (first at line 1)"),
        (
            "exporters:\n  a: {type: file, path: /x}\n  a: {type: file, path: /y}\n",
            ":3:3: duplicate key 'a' (first at line 2)",
        ),
        ("exporters:\n  a: {type: file, path: /x, path: /y}\n", ":2:29: duplicate key 'path'"),
    ],
)
def test_a_duplicate_yaml_key_is_an_error_not_last_one_wins(
    tmp_path: Path, text: str, where: str
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load(path)
    assert f"{path}{where}" in str(info.value)


def test_yaml_merge_keys_are_not_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "base: &b {type: file, queue_records: 10}\n"
        "exporters:\n  a: {<<: *b, path: /x}\n  b: {<<: *b, path: /y}\n"
    )
    with pytest.raises(ConfigError, match="base: unknown key"):
        load(path)  # the anchor's holder is not an option; the merges themselves are fine


def test_two_file_exporters_writing_one_path_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"exporters.b.path: the same file as exporters.a.path"):
        parse(
            {
                "exporters": {
                    "a": {"type": "file", "path": "/var/log/x.ndjson"},
                    "b": {"type": "file", "path": "/var/log/sub/../x.ndjson"},
                }
            }
        )
    parse(
        {
            "exporters": {
                "a": {"type": "file", "path": "/x/a"},
                "b": {"type": "file", "path": "/x/b"},
            }
        }
    )
