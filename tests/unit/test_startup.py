"""What a start costs: the agent imports the exporters its config names and no other,
aiohttp's default TLS contexts are made without the CA store until an exporter that could
use them starts, frozenlist's C++ extension (and libstdc++ with it) is not loaded, and
aiohttp.web is imported without reading the system's mime.types. Each case runs in a
fresh interpreter, as an agent's start does."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest


def run(code: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_only_the_configured_exporters_are_imported() -> None:
    out = run(
        """
        import sys
        from agent.config import parse
        parse({"exporters": {"out": {"type": "file", "path": "/tmp/x.ndjson"}}})
        print(sorted(m for m in sys.modules if m.split(".")[0] == "exporters"))
        parse({"exporters": {"h": {"type": "http", "url": "http://127.0.0.1:1/"}}})
        print("exporters.http" in sys.modules, "exporters.prometheus" in sys.modules)
        """
    )
    first, second = out.splitlines()
    assert "'exporters.file'" in first
    assert "exporters.http" not in first and "exporters.prometheus" not in first
    assert second == "True False"


def test_an_unknown_type_names_every_type_there_is() -> None:
    from agent.config import ConfigError, parse

    with pytest.raises(ConfigError) as err:
        parse({"exporters": {"x": {"type": "kafka"}}})
    assert "unknown exporter type 'kafka' (known: file, http, prometheus)" in str(err.value)


def test_each_exporter_module_registers_the_type_it_is_named_after() -> None:
    import exporters

    for name in exporters.names():
        cls = exporters.load(name)
        assert cls is not None and cls.type_name == name
    assert exporters.load("nothing") is None


def test_aiohttp_default_contexts_get_the_ca_store_only_when_asked() -> None:
    out = run(
        """
        import ssl
        real = ssl.create_default_context
        import agent.cli  # imports aiohttp the way the agent starts
        import aiohttp.connector
        from agent import load_deferred_ca
        assert ssl.create_default_context is real  # untouched
        assert "set_default_verify_paths" not in vars(ssl.SSLContext)  # put back
        verified = aiohttp.connector._SSL_CONTEXT_VERIFIED
        unverified = aiohttp.connector._SSL_CONTEXT_UNVERIFIED  # ssl=False
        assert verified.verify_mode == ssl.CERT_REQUIRED and verified.check_hostname
        assert unverified.verify_mode == ssl.CERT_NONE and not unverified.check_hostname
        print(verified.cert_store_stats()["x509_ca"], unverified.cert_store_stats()["x509_ca"])
        load_deferred_ca()
        print(
            verified.cert_store_stats()["x509_ca"],
            unverified.cert_store_stats()["x509_ca"],
            real().cert_store_stats()["x509_ca"],
        )
        """
    )
    before, after = out.splitlines()
    assert before == "0 0"
    verified, unverified, system = after.split()
    assert int(system) > 0
    assert verified == unverified == system  # the whole store, as create_default_context reads it


def test_an_https_exporter_without_verification_gets_the_ca_store_into_aiohttps_context() -> None:
    out = run(
        """
        import asyncio
        import agent.cli
        import aiohttp.connector
        from exporters.http.config import HttpConfig
        from exporters.http.exporter import HttpExporter
        unverified = aiohttp.connector._SSL_CONTEXT_UNVERIFIED  # what ssl=False uses
        print(unverified.cert_store_stats()["x509_ca"])
        async def main():
            config = HttpConfig(type="http", url="https://127.0.0.1:1/", tls={"verify": False})
            exporter = HttpExporter("out", config)
            await exporter.start()
            await exporter.close()
        asyncio.run(main())
        print(unverified.cert_store_stats()["x509_ca"] > 0)
        """
    )
    assert out.splitlines() == ["0", "True"]


def test_frozenlist_is_the_python_one_and_libstdcxx_stays_out() -> None:
    out = run(
        """
        import sys
        import agent.cli  # imports aiohttp the way the agent starts
        import aiohttp.web
        import frozenlist
        print(frozenlist.FrozenList is frozenlist.PyFrozenList)
        print("frozenlist._frozenlist" in sys.modules)
        with open("/proc/self/maps") as maps:
            print(any("libstdc++" in line for line in maps))
        app = aiohttp.web.Application()  # its lists are FrozenLists
        app.freeze()
        print(type(app.middlewares).__module__, app.middlewares.frozen)
        """
    )
    assert out.splitlines() == ["True", "False", "False", "frozenlist True"]


def test_processing_stages_are_imported_only_when_a_chain_needs_them() -> None:
    out = run(
        """
        import sys
        import agent.runtime
        from agent.processing.build import Processing
        from agent.processing.config import ProcessingConfig
        from agent.record import ContainerMeta
        stages = ("multiline", "parse", "filter", "limit", "redact")
        loaded = lambda: [s for s in stages if f"agent.processing.{s}" in sys.modules]
        print(loaded())
        p = Processing(ProcessingConfig.model_validate({"multiline": "java"}))
        assert p.chain(ContainerMeta("c1", "/a", "busybox", {}, "h")) is not None
        print(loaded())
        """
    )
    assert out.splitlines() == ["[]", "['multiline']"]


def test_tune_gc_collects_what_start_up_left_and_freezes_the_rest() -> None:
    out = run(
        """
        import gc, weakref
        from agent.cli import GC_THRESHOLD, tune_gc
        class Node:
            pass
        cycle = Node()
        cycle.me = cycle  # garbage that only the collector frees, as schema building leaves
        gone = weakref.ref(cycle)
        del cycle
        kept = Node()
        tune_gc()
        print(gone() is None, gc.get_threshold() == (GC_THRESHOLD, 20, 20))
        print(gc.get_freeze_count() > 10_000, gc.get_count()[1:])
        """
    )
    assert out.splitlines() == ["True True", "True (0, 0)"]


def test_the_prometheus_exporter_serves_without_aiohttp_web() -> None:
    """aiohttp's low-level server and the exporter's own table of paths: aiohttp.web's
    application, router, runner, websocket and static-file modules (~0.6 MB) stay
    unimported, and the system's mime.types unread; the answers are the router's (404
    elsewhere, 405 with Allow for another method, HEAD without a body)."""
    out = run(
        """
        import asyncio, mimetypes, socket, sys
        import agent.cli
        from exporters.prometheus.config import PrometheusConfig
        from exporters.prometheus.exporter import PrometheusExporter
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        async def ask(method, path):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            head = f"{method} {path} HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n"
            writer.write(head.encode())
            answer = await reader.read()
            writer.close()
            head, _, body = answer.partition(b"\\r\\n\\r\\n")
            lines = head.decode().split("\\r\\n")
            allow = [h for h in lines if h.lower().startswith("allow:")]
            return lines[0], allow, body
        async def main():
            config = PrometheusConfig(type="prometheus", listen=f"127.0.0.1:{port}", tap=False)
            exporter = PrometheusExporter("metrics", config)
            await exporter.start()
            try:
                for method, path in [("GET", "/healthz"), ("HEAD", "/healthz"),
                                     ("GET", "/nothing"), ("POST", "/healthz"),
                                     ("GET", "/tap"), ("GET", "/healthz/")]:
                    print(method, path, *await ask(method, path))
            finally:
                await exporter.close()
            print(exporter.health().ok)
        asyncio.run(main())
        print(sorted(m for m in sys.modules if m.startswith("aiohttp.web")))
        print(mimetypes.inited)
        """
    )
    assert out.splitlines() == [
        "GET /healthz HTTP/1.1 200 OK [] b'{\"alive\":true}'",
        "HEAD /healthz HTTP/1.1 200 OK [] b''",
        "GET /nothing HTTP/1.1 404 Not Found [] b'404: Not Found'",
        "POST /healthz HTTP/1.1 405 Method Not Allowed ['Allow: GET,HEAD'] "
        "b'405: Method Not Allowed'",
        "GET /tap HTTP/1.1 404 Not Found [] b'404: Not Found'",
        "GET /healthz/ HTTP/1.1 404 Not Found [] b'404: Not Found'",
        "False",
        "['aiohttp.web_exceptions', 'aiohttp.web_log', 'aiohttp.web_protocol', "
        "'aiohttp.web_request', 'aiohttp.web_response', 'aiohttp.web_server']",
        "False",
    ]


# A fresh interpreter that starts a prometheus exporter on a free port, runs
# ``while_started`` and closes it (the tests' code follows, at the same indent).
PROMETHEUS_STARTED = """
        import asyncio, socket, sys
        import agent.cli
        from exporters.prometheus.config import PrometheusConfig
        from exporters.prometheus.exporter import PrometheusExporter
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        async def main():
            config = PrometheusConfig(type="prometheus", listen=f"127.0.0.1:{{port}}")
            exporter = PrometheusExporter("metrics", config)
            await exporter.start()
            try:
                {while_started}
            finally:
                await exporter.close()
        asyncio.run(main())"""


def test_the_prometheus_exporter_imports_gzip_only_for_a_gzipped_answer() -> None:
    out = run(
        PROMETHEUS_STARTED.format(while_started="pass")
        + """
        import gzip
        from exporters.prometheus.exposition import gzip_body, pieces
        print("exporters._compress" in sys.modules, "isal" in sys.modules)
        body = b"up 1\\n" * 1000
        assert gzip.decompress(gzip_body(pieces([body])).join()) == body
        print("exporters._compress" in sys.modules)
        """
    )
    assert out.splitlines() == ["False False", "True"]


def test_the_disk_buffer_is_imported_only_for_an_exporter_that_has_one() -> None:
    out = run(
        """
        import sys
        import agent.cli
        from agent.config import parse
        from agent.runtime import Runtime
        print("agent.delivery.buffer" in sys.modules)
        out = {"type": "file", "path": "/tmp/x.ndjson", "buffer": {"type": "disk"}}
        config = parse({"exporters": {"out": out}, "state_dir": "/tmp/unused-state"})
        buffer = Runtime(config).make_buffer("out", config.exporters["out"])
        print(type(buffer).__module__)
        """
    )
    assert out.splitlines() == ["False", "agent.delivery.buffer"]


def test_run_imports_no_operator_command_module() -> None:
    """``run`` declares the status/top/tap/health arguments (agent.ops.commands) without
    importing the commands; each command imports its module when it runs."""
    out = run(
        """
        import sys
        from agent import cli
        args = cli._parser().parse_args(["run"])
        print(sorted(m for m in sys.modules if m.startswith("agent.ops.")))
        args = cli._parser().parse_args(["health", "--endpoint", "127.0.0.1:1", "--timeout", "0.2"])
        print(cli.main(["health", "--endpoint", "127.0.0.1:1", "--timeout", "0.2"]))
        print(sorted(m for m in sys.modules if m.startswith("agent.ops.")))
        """
    )
    first, code, after = out.splitlines()[-3:]
    assert first == "['agent.ops.commands']"
    assert code == "1"  # nothing listens there: unhealthy
    assert after == "['agent.ops.commands', 'agent.ops.health']"


def test_no_config_field_has_list_as_its_default_factory() -> None:
    """pydantic reads every default factory's signature when it builds a model, and
    ``inspect.signature(list)`` parses list's text signature (~0.1 ms a field, at every
    start): the sections' list fields use ``empty_list``, whose instances are not shared."""
    out = run(
        """
        import exporters
        import agent.config
        from agent.filters import Match
        from agent.section import Section
        for name in exporters.names():
            exporters.load(name)
        def subclasses(cls):
            for sub in cls.__subclasses__():
                yield sub
                yield from subclasses(sub)
        models = set(subclasses(Section))
        print(len(models), sorted(
            f"{m.__name__}.{f}" for m in models for f, info in m.model_fields.items()
            if info.default_factory in (list, tuple, set)
        ))
        a, b = Match(), Match()
        print(a.name == [] and a.name is not b.name)
        """
    )
    counted, fields = out.splitlines()[0].split(" ", 1)
    assert int(counted) > 10 and fields == "[]"
    assert out.splitlines()[1] == "True"


def test_the_prometheus_listener_resolves_an_ascii_host_without_the_idna_codec() -> None:
    """socket.getaddrinfo encodes a str host with the idna codec (its import is ~110 kB);
    the listener passes an ASCII host as bytes: the same address, the codec not imported."""
    out = run(
        PROMETHEUS_STARTED.format(
            while_started="print([s.getsockname() for s in exporter.listener.sockets])"
        )
        + """
        print("encodings.idna" in sys.modules)
        """
    )
    assert out.splitlines()[0].startswith("[('127.0.0.1', ")
    assert out.splitlines()[1] == "False"

    from exporters.prometheus.listener import _host_arg

    assert _host_arg("localhost") == b"localhost" and _host_arg(None) is None
    assert _host_arg("bücher.example") == "bücher.example"  # idna's to encode


def test_engine_timestamps_are_read_without_strptime() -> None:
    """time.strptime's first call imports _strptime and builds its locale's patterns
    (~90 kB); the engine's stamps (discovery's ``since``, stats reads, start times) are
    read by datetime.fromisoformat."""
    out = run(
        """
        import sys
        from agent.record import normalize_timestamp, timestamp_to_unix
        print(timestamp_to_unix("2026-11-28T11:11:02.5+01:00"))
        print(normalize_timestamp("2026-11-28T10:11:02Z"))
        print("_strptime" in sys.modules)
        """
    )
    assert out.splitlines() == [
        "1795860662.500000000",
        "2026-11-28T10:11:02.000000000Z",
        "False",
    ]


_CDLL_RECORDED = """
        import ctypes
        calls = []
        real_cdll = ctypes.CDLL
        def cdll(*args, **kwargs):
            calls.append(args)
            return real_cdll(*args, **kwargs)
        ctypes.CDLL = cdll  # (inotify_simple has ctypes imported: its libc is its own)
        """


def test_the_heap_is_trimmed_without_ctypes_when_the_extension_is_built() -> None:
    out = run(
        _CDLL_RECORDED
        + """
        import os
        os.environ.pop("CONTAINER_AGENT_PURE_PYTHON", None)  # the unit tests' pure variant
        from agent.cli import tune_gc
        from agent.speedups import speedups, trim_heap
        tune_gc()  # trims the heap
        trim_heap()
        released = speedups.malloc_trim()  # glibc: whether pages went back
        print(speedups is not None, calls, released in (True, False))
        """
    )
    assert out.splitlines() == ["True [] True"]


def test_the_heap_is_trimmed_through_ctypes_without_the_extension() -> None:
    out = run(
        _CDLL_RECORDED
        + """
        import os
        os.environ["CONTAINER_AGENT_PURE_PYTHON"] = "1"
        from agent.cli import tune_gc
        from agent.speedups import speedups
        tune_gc()
        print(speedups is None, calls)
        """
    )
    assert out.splitlines() == ["True [(None,)]"]
