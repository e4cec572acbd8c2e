"""The engine client against a scripted engine on a unix socket."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web
from structlog.testing import capture_logs

from agent.engine.client import Engine


async def scripted_engine(tmp_path: Path, events: bytes) -> tuple[str, web.AppRunner]:
    async def version(request: web.Request) -> web.Response:
        return web.json_response({"ApiVersion": "1.41", "Version": "20.10.24"})

    async def stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(events)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/version", version)
    app.router.add_get("/v1.41/version", version)
    app.router.add_get("/v1.41/events", stream)
    runner = web.AppRunner(app)
    await runner.setup()
    path = str(tmp_path / "engine.sock")
    await web.UnixSite(runner, path).start()
    return path, runner


async def test_an_unreadable_event_is_skipped_and_counted_not_fatal(tmp_path: Path) -> None:
    """A JSON decode error in the event stream used to end discovery's task for good."""
    body = b'{"Action":"start","id":"a"}\nnot json\n[1, 2]\n{"Action":"die","id":"a"}\n'
    path, runner = await scripted_engine(tmp_path, body)
    engine = Engine(f"unix://{path}")
    try:
        await engine.version()
        with capture_logs() as logs:
            got = [e async for e in engine.events()]
    finally:
        await engine.close()
        await runner.cleanup()
    assert [e["Action"] for e in got] == ["start", "die"]
    assert engine.bad_events == 2
    assert [e["count"] for e in logs if e["event"] == "engine_event_unreadable"] == [1, 2]


async def test_the_api_pool_is_bounded_where_log_streams_do_not_use_it() -> None:
    """Over a unix socket and plain TCP, log streams have sockets of their own: the pool
    carries API calls only, bounded, idle connections closed soon (1,000 containers
    starting inspected at once left 814 sockets open). Over TLS it is not bounded: every
    log stream is in it."""
    from agent.engine.client import API_CONNECTIONS, API_KEEPALIVE_SECONDS, _client
    from agent.engine.tls import TlsConfig

    plain = TlsConfig(verify=False, ca_file=None, cert_file=None, key_file=None)
    for host, tls, limit in (
        ("unix:///nowhere.sock", plain, API_CONNECTIONS),
        ("tcp://127.0.0.1:2375", plain, API_CONNECTIONS),
        ("tcp://127.0.0.1:2376", TlsConfig(verify=True, ca_file=None), 0),
    ):
        docker = _client(host, tls)
        try:
            connector = docker.session.connector
            assert connector is not None
            assert connector.limit == limit, host
            assert connector._keepalive_timeout == API_KEEPALIVE_SECONDS
        finally:
            await docker.close()
