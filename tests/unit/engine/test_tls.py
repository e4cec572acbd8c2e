"""TLS to a tcp:// engine: the settings (config and the Docker CLI's environment) and the
client against a scripted HTTPS engine on 127.0.0.1 that asks for a client certificate,
as ``dockerd --tlsverify`` does. tests/integration/engine/test_tls.py runs a real one."""

from __future__ import annotations

import re
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from agent.config import ConfigError, parse
from agent.engine.client import Engine, EngineError, _plain_address, _split_tcp
from agent.engine.tls import TlsConfig
from tests.unit.engine.tls_certs import Certs, make_certs

FRAME = b"\x01\x00\x00\x00\x00\x00\x00\x2a2024-01-01T00:00:00.000000001Z hello tls\n"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
async def https_engine(certs: Certs) -> AsyncIterator[int]:
    """A scripted engine over TLS on 127.0.0.1 that requires a client certificate signed
    by the CA; yields its port."""

    async def version(request: web.Request) -> web.Response:
        return web.json_response({"ApiVersion": "1.41", "Version": "20.10.24"})

    async def info(request: web.Request) -> web.Response:
        return web.json_response({"Name": "tls-engine"})

    async def logs(request: web.Request) -> web.StreamResponse:
        assert request.query["follow"] == "0"
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(FRAME)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/version", version)
    app.router.add_get("/v1.41/info", info)
    app.router.add_get("/v1.41/containers/{id}/logs", logs)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(certs.server_cert, certs.server_key)
    server.load_verify_locations(certs.ca)
    server.verify_mode = ssl.CERT_REQUIRED
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield port
    finally:
        await runner.cleanup()


def tls(certs: Certs, **overrides: object) -> TlsConfig:
    values: dict[str, object] = {
        "verify": True,
        "ca_file": str(certs.ca),
        "cert_file": str(certs.client_cert),
        "key_file": str(certs.client_key),
    }
    values.update(overrides)
    return TlsConfig.model_validate(values)


async def calls(engine: Engine) -> tuple[str, str, bytes]:
    try:
        version = await engine.version()
        info = await engine.info()
        async with engine.logs("c1", follow=False) as stream:
            body = b""
            while parts := await stream.read_parts():
                body += b"".join(parts)
        return version["Version"], info["Name"], body
    finally:
        await engine.close()


async def test_every_call_and_the_log_stream_go_over_tls(https_engine: int, certs: Certs) -> None:
    engine = Engine(f"tcp://127.0.0.1:{https_engine}", tls(certs))
    assert engine.secure and _plain_address(engine.host, engine.tls) is None
    assert await calls(engine) == ("20.10.24", "tls-engine", FRAME)


async def test_the_docker_cli_environment(
    https_engine: int, certs: Certs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{https_engine}")
    monkeypatch.setenv("DOCKER_TLS_VERIFY", "1")
    monkeypatch.setenv("DOCKER_CERT_PATH", str(certs.directory))
    config = parse({})
    assert config.engine.tls == tls(certs)
    assert await calls(Engine(config.engine.host, config.engine.tls)) == (
        "20.10.24",
        "tls-engine",
        FRAME,
    )
    assert await calls(Engine(config.engine.host)) == ("20.10.24", "tls-engine", FRAME)


async def test_a_wrong_ca_is_named(https_engine: int, certs: Certs) -> None:
    engine = Engine(f"tcp://127.0.0.1:{https_engine}", tls(certs, ca_file=str(certs.wrong_ca)))
    with pytest.raises(EngineError) as err:
        await calls(engine)
    message = str(err.value)
    assert message.startswith("GET /version: the engine's certificate was not accepted: ")
    # (OpenSSL's own words: this server sends its CA along, Go's sends the leaf alone.)
    assert "self-signed certificate in certificate chain" in message
    assert f"ca_file={certs.wrong_ca}" in message


async def test_the_host_name_is_verified(https_engine: int, certs: Certs) -> None:
    """The certificate names 127.0.0.1 only: reached as localhost, it is refused (as by
    the Docker CLI); without verification it is accepted, and still encrypted (this engine
    speaks nothing but TLS)."""
    engine = Engine(f"tcp://localhost:{https_engine}", tls(certs))
    with pytest.raises(EngineError, match=r"certificate was not accepted: .*mismatch"):
        await calls(engine)
    unverified = Engine(f"tcp://localhost:{https_engine}", tls(certs, verify=False, ca_file=None))
    assert unverified.secure
    assert await calls(unverified) == ("20.10.24", "tls-engine", FRAME)


async def test_no_client_certificate_is_a_tls_error(https_engine: int, certs: Certs) -> None:
    engine = Engine(f"tcp://127.0.0.1:{https_engine}", tls(certs, cert_file=None, key_file=None))
    with pytest.raises(EngineError) as err:
        await calls(engine)
    message = str(err.value)
    assert message.startswith("GET /version: ")
    assert "(over TLS: verify=true" in message and "no client certificate" in message


async def test_unusable_files_are_named(certs: Certs, tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(
        EngineError, match=re.escape(f"engine.tls.ca_file: no such file: {missing}")
    ):
        await Engine("tcp://127.0.0.1:1", tls(certs, ca_file=str(missing))).version()
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(EngineError, match=re.escape("engine.tls.cert_file/key_file: not usable")):
        await Engine("tcp://127.0.0.1:1", tls(certs, cert_file=str(garbage))).version()
    # A key that is not the certificate's.
    with pytest.raises(EngineError, match=re.escape("engine.tls.cert_file/key_file: not usable")):
        await Engine("tcp://127.0.0.1:1", tls(certs, key_file=str(certs.server_key))).version()


def test_environment_defaults(
    certs: Certs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH"):
        monkeypatch.delenv(name, raising=False)
    assert TlsConfig() == TlsConfig(verify=False, ca_file=None, cert_file=None, key_file=None)
    assert not TlsConfig().enabled
    # DOCKER_CERT_PATH alone: TLS with the client certificate, no verification (the Go
    # client's FromEnv); files that are not there are left out.
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "cert.pem").write_bytes(certs.client_cert.read_bytes())
    (partial / "key.pem").write_bytes(certs.client_key.read_bytes())
    monkeypatch.setenv("DOCKER_CERT_PATH", str(partial))
    got = TlsConfig()
    assert (got.verify, got.ca_file, got.cert_file) == (False, None, str(partial / "cert.pem"))
    assert got.enabled
    # DOCKER_TLS_VERIFY: any value verifies (as for the CLI); the files are expected.
    monkeypatch.setenv("DOCKER_TLS_VERIFY", "0")
    got = TlsConfig()
    assert got.verify and got.ca_file == str(partial / "ca.pem")
    # Without DOCKER_CERT_PATH: ~/.docker.
    monkeypatch.delenv("DOCKER_CERT_PATH")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert TlsConfig().key_file == str(tmp_path / ".docker" / "key.pem")


def test_config_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "DOCKER_HOST"):
        monkeypatch.delenv(name, raising=False)
    config = parse({"engine": {"host": "tcp://10.0.0.1:2376", "tls": {"verify": True}}})
    assert config.engine.tls.verify and config.engine.tls.ca_file is None
    with pytest.raises(
        ConfigError, match=re.escape("engine.tls: cert_file is set but key_file is not")
    ):
        parse({"engine": {"tls": {"cert_file": "/c.pem"}}})
    with pytest.raises(ConfigError, match=re.escape("engine.tls.verfy: unknown key")):
        parse({"engine": {"tls": {"verfy": True}}})


def test_which_hosts_use_tls() -> None:
    on = TlsConfig(verify=True)
    assert Engine("tcp://127.0.0.1:2376", on).secure
    assert not Engine("http://127.0.0.1:2375", on).secure  # http:// is plain
    assert not Engine("unix:///run/docker.sock", on).secure
    assert not Engine("tcp://127.0.0.1:2375", TlsConfig(verify=False)).secure
    assert _plain_address("tcp://127.0.0.1:2375", TlsConfig(verify=False)) == ("127.0.0.1", 2375)
    assert _split_tcp("tcp://engine.example", 2376) == ("engine.example", 2376)
    assert _split_tcp("tcp://[::1]:2376/", 2375) == ("::1", 2376)
    assert _split_tcp("tcp://[::1]", 2375) == ("::1", 2375)
