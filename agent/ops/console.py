"""``container-agent status``, ``top`` and ``tap``: a running agent seen from a terminal.

They ask the agent's listener (its prometheus exporter: ``/status``, ``/tap``) at
``--endpoint``, else the ``listen`` of the config's prometheus exporter, else the default
``127.0.0.1:9811``. ``status`` prints the document as tables (``--json``: as it is),
``top`` refreshes them in place, busiest containers first, and ``tap`` prints the records
passing through the agent, as they pass, one JSON line each.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from agent.ops.commands import DEFAULT_LISTEN
from agent.ops.health import (
    HealthError,
    listen_from_config,
    url_for_endpoint,
    url_for_listen,
)

EXIT_OK = 0
EXIT_FAILED = 1


def base_url(endpoint: str | None, config: str | None) -> str:
    """``http://host:port`` of the agent's listener."""
    if endpoint:
        url = url_for_endpoint(endpoint)
    elif config:
        url = url_for_listen(listen_from_config(config))
    else:
        url = url_for_listen(DEFAULT_LISTEN)
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _open(url: str, timeout: float | None) -> Any:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # this host
    return opener.open(urllib.request.Request(url), timeout=timeout)


def fetch_status(base: str, timeout: float = 5.0) -> dict[str, Any]:
    with _open(base + "/status", timeout) as response:
        doc: dict[str, Any] = json.load(response)
        return doc


# -- rendering ---------------------------------------------------------------------------


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def render(doc: dict[str, Any], limit: int | None = None) -> Any:
    """The status document as rich renderables (a header line and two tables)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    agent, engine = doc["agent"], doc["engine"]
    state = "connected" if engine["connected"] else f"DISCONNECTED: {engine['last_error']}"
    up = _age(agent["uptime_seconds"])
    head = Text(
        f"container-agent {agent['version']} on {agent['host']} · up {up}"
        f" · engine {engine['host']} {state} · reconnects {engine['reconnects']}"
        f" · config {agent.get('config_hash') or '-'}"
    )
    if agent.get("tasks_down"):
        head.append(f" · TASKS DOWN: {', '.join(agent['tasks_down'])}", style="bold red")
    containers = Table(title="Containers", title_justify="left", expand=True)
    for col, justify in (
        ("name", "left"),
        ("source", "left"),
        ("lines/s", "right"),
        ("bytes/s", "right"),
        ("lag", "right"),
        ("lines", "right"),
        ("failures", "right"),
        ("last error", "left"),
    ):
        containers.add_column(col, justify=justify)  # type: ignore[arg-type]
    for c in doc["containers"][:limit]:
        containers.add_row(
            c["name"],
            c["source"] or "-",
            f"{c['lines_per_second']:.1f}",
            f"{c['bytes_per_second']:.0f}",
            _age(c["lag_seconds"]),
            str(c["lines"]),
            str(c["read_failures"]),
            c["last_error"][:60],
        )
    exporters = Table(title="Exporters", title_justify="left", expand=True)
    for col in ("name", "target", "ok", "records/s", "queue", "buffered", "retries", "drops",
                "dead letters", "last error"):  # fmt: skip
        exporters.add_column(col)
    for e in doc["exporters"]:
        exporters.add_row(
            e["name"],
            e["target"],
            "yes" if e["healthy"] else "NO",
            f"{e['records_per_second']:.1f}",
            f"{e['queue_records']}/{e['queue_capacity']}",
            str(e["buffered_records"]),
            str(e["retries"]),
            str(sum(e["dropped"].values())),
            str(e["dead_lettered"]),
            (e["detail"] or e["last_error"])[:60],
        )
    return Group(head, containers, exporters)


# -- the commands ------------------------------------------------------------------------


def _failed(message: str) -> int:
    print(f"container-agent: {message}", file=sys.stderr)
    return EXIT_FAILED


PIPED_WIDTH = 240  # columns of ``status`` written to a file or a pipe


def status_main(args: argparse.Namespace) -> int:
    try:
        doc = fetch_status(base_url(args.endpoint, args.config))
    except (HealthError, OSError, ValueError) as exc:
        return _failed(f"cannot read the agent's status: {exc}")
    if args.json:
        print(json.dumps(doc, indent=2))
        return EXIT_OK
    from rich.console import Console

    console = Console()
    if not console.is_terminal:  # piped or redirected: wide enough that nothing is cut
        console = Console(width=PIPED_WIDTH)
    console.print(render(doc))
    return EXIT_OK


def top_main(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.live import Live

    try:
        base = base_url(args.endpoint, args.config)
    except HealthError as exc:
        return _failed(str(exc))
    console = Console()
    try:
        with Live(console=console, screen=True, auto_refresh=False) as live:
            while True:
                try:
                    view: Any = render(fetch_status(base), limit=max(5, console.height - 14))
                except (OSError, ValueError) as exc:
                    view = f"cannot read the agent's status at {base}: {exc}"
                live.update(view, refresh=True)
                time.sleep(args.interval)
    except KeyboardInterrupt:
        return EXIT_OK


def tap_main(args: argparse.Namespace) -> int:
    try:
        base = base_url(args.endpoint, args.config)
    except HealthError as exc:
        return _failed(str(exc))
    query = {
        k: v
        for k, v in (
            ("container", args.container),
            ("exporter", args.exporter),
            ("grep", args.grep),
            ("limit", args.limit),
        )
        if v is not None
    }
    url = f"{base}/tap?{urllib.parse.urlencode(query)}"
    try:
        with _open(url, None) as response:
            for line in response:
                sys.stdout.write(line.decode("utf-8", "replace"))
                sys.stdout.flush()
    except urllib.error.HTTPError as exc:
        return _failed(f"{url}: {exc.code} {exc.read(200).decode('utf-8', 'replace')}")
    except OSError as exc:
        return _failed(f"{url}: {exc}")
    except KeyboardInterrupt:
        pass
    return EXIT_OK
