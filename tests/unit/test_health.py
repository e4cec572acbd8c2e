"""``container-agent health`` against a tiny HTTP server on 127.0.0.1 (no agent needed)."""

from __future__ import annotations

import http.server
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.cli import main as cli_main
from agent.ops import health


class _Handler(http.server.BaseHTTPRequestHandler):
    status = 200
    body = b'{"alive":true}'
    delay = 0.0
    paths: list[str] = []

    def do_GET(self) -> None:
        self.paths.append(self.path)
        time.sleep(self.delay)
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that gave up (the timeout test) is no error here


@pytest.fixture
def server() -> Iterator[tuple[type[_Handler], str]]:
    handler = type("Handler", (_Handler,), {"paths": []})
    httpd = _Server(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield handler, f"127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_200_is_healthy_exit_0(server, capsys) -> None:
    handler, address = server
    assert cli_main(["health", "--endpoint", address]) == 0
    out = capsys.readouterr()
    assert out.out == f"healthy: http://{address}/healthz answered 200\n"
    assert out.err == ""
    assert handler.paths == ["/healthz"]


def test_other_status_is_unhealthy_with_its_body(server, capsys) -> None:
    handler, address = server
    handler.status, handler.body = 503, b'{"ready":false}\n'
    assert cli_main(["health", "--endpoint", f"http://{address}"]) == 1
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err == f'unhealthy: http://{address}/healthz answered 503: {{"ready":false}}\n'


def test_an_endpoint_path_is_asked_as_given(server) -> None:
    handler, address = server
    handler.status, handler.body = 404, b""
    result = health.run(f"http://{address}/elsewhere", None, 5)
    assert not result.ok and result.line.endswith("answered 404")
    assert handler.paths == ["/elsewhere"]


def test_nothing_listening_is_one_line_exit_1(capsys) -> None:
    port = _free_port()
    assert cli_main(["health", "--endpoint", f"127.0.0.1:{port}"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"unhealthy: http://127.0.0.1:{port}/healthz: connection refused")


def test_no_answer_within_the_timeout(server) -> None:
    handler, address = server
    handler.delay = 2.0
    t0 = time.monotonic()
    result = health.run(address, None, 0.3)
    assert time.monotonic() - t0 < 1.5
    assert result == health.Result(
        False, f"unhealthy: http://{address}/healthz: no answer within 0.3 s"
    )


def test_the_address_comes_from_the_configs_prometheus_exporter(
    server, tmp_path: Path, capsys
) -> None:
    _handler, address = server
    port = address.rpartition(":")[2]
    config = tmp_path / "agent.yaml"
    config.write_text(
        "exporters:\n"
        "  records: {type: file, path: /x.ndjson}\n"
        f"  metrics:\n    type: prometheus\n    listen: 0.0.0.0:{port}\n"
    )
    assert cli_main(["health", "--config", str(config)]) == 0
    assert capsys.readouterr().out == f"healthy: http://127.0.0.1:{port}/healthz answered 200\n"


def test_config_without_exporters_means_the_defaults(tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text("state_dir: /x\n")
    assert health.listen_from_config(str(config)) == "127.0.0.1:9811"
    config.write_text("")
    assert health.listen_from_config(str(config)) == "127.0.0.1:9811"
    config.write_text("exporters:\n  m: {type: prometheus}\n")
    assert health.listen_from_config(str(config)) == "127.0.0.1:9811"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("exporters:\n  r: {type: file, path: /x}\n", "no prometheus exporter"),
        ("exporters: [\n", "not YAML"),
        ("- 1\n", "the top level is not a mapping"),
    ],
)
def test_config_problems_are_unhealthy_naming_the_file(
    tmp_path: Path, text: str, message: str
) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(text)
    result = health.run(None, str(config), 1)
    assert not result.ok
    assert result.line.startswith(f"unhealthy: {config}: ") and message in result.line


def test_missing_config(tmp_path: Path) -> None:
    result = health.run(None, str(tmp_path / "none.yaml"), 1)
    assert result.line == (
        f"unhealthy: {tmp_path / 'none.yaml'}: cannot read the config file: "
        "No such file or directory"
    )


def test_the_default_address(monkeypatch) -> None:
    asked = []
    monkeypatch.setattr(health, "check", lambda url, timeout: asked.append(url))
    health.run(None, None, 1)
    assert asked == ["http://127.0.0.1:9811/healthz"]


@pytest.mark.parametrize(
    ("listen", "url"),
    [
        ("127.0.0.1:9811", "http://127.0.0.1:9811/healthz"),
        ("0.0.0.0:9811", "http://127.0.0.1:9811/healthz"),
        (":9811", "http://127.0.0.1:9811/healthz"),
        ("[::]:9811", "http://[::1]:9811/healthz"),
        ("[::1]:9999", "http://[::1]:9999/healthz"),
        ("localhost:1", "http://localhost:1/healthz"),
    ],
)
def test_listen_addresses(listen: str, url: str) -> None:
    assert health.url_for_listen(listen) == url


@pytest.mark.parametrize(
    ("endpoint", "url"),
    [
        ("http://h:1", "http://h:1/healthz"),
        ("http://h:1/", "http://h:1/healthz"),
        ("http://h:1/readyz", "http://h:1/readyz"),
        ("https://h:1", "https://h:1/healthz"),
        ("h:1", "http://h:1/healthz"),
    ],
)
def test_endpoints(endpoint: str, url: str) -> None:
    assert health.url_for_endpoint(endpoint) == url


def test_bad_endpoints() -> None:
    for endpoint in ("ftp://h:1", "http://", "nohost"):
        result = health.run(endpoint, None, 1)
        assert not result.ok and result.line.startswith("unhealthy: "), endpoint


def test_a_proxy_in_the_environment_is_not_used(server, monkeypatch) -> None:
    _handler, address = server
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{_free_port()}")
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{_free_port()}")
    assert health.run(address, None, 5).ok


def test_the_standalone_module_imports_none_of_the_agent(server) -> None:
    """What the image's HEALTHCHECK runs: ``python -m agent.ops.health`` loads no pydantic,
    aiohttp or agent layer (it starts in a fraction of the agent's time)."""
    _handler, address = server
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['health', '--endpoint', '{address}']\n"
        "try:\n"
        "    runpy.run_module('agent.ops.health', run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
        "mods = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('agent', 'exporters', 'pydantic', 'aiohttp', 'yaml', 'orjson', 'structlog'))\n"
        "print(mods)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    # health runs as __main__; its arguments are agent.ops.commands' (the stdlib only)
    assert out.stdout.splitlines()[-1] == "['agent', 'agent.ops', 'agent.ops.commands']"
