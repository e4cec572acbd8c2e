"""Fluent Bit as a reference reader, side by side with the agent (``bench.scale``).

Only when ``$FLUENT_BIT`` names a fluent-bit binary (it is not built or installed by the
project; without it the comparisons are simply absent). Fluent Bit runs as a subprocess
that reads local files and writes one local file, nothing else:

* ``[INPUT] tail`` on ``<containers dir>/*/*-json.log`` with the ``docker`` parser (as in
  Fluent Bit's own ``conf/parsers.conf``: JSON, ``Time_Key time``, ``Time_Keep On``, so the
  engine's stamp stays in each record), its offsets in a DB file in the work dir,
  ``Path_Key filename`` (each record names its file, hence its container), and
  ``Read_from_Head On`` (the agent's ``logs.start_at`` default is ``beginning``);
* ``[OUTPUT] file`` with ``Format plain``: one JSON object per line;
* ``[SERVICE]`` with its HTTP server off (its default) and otherwise Fluent Bit's defaults:
  ``Flush 1`` (s), memory buffering, no ``Mem_Buf_Limit``, tail's ``Refresh_Interval 60``
  (s), ``Buffer_Chunk_Size``/``Buffer_Max_Size`` 32 KiB, inotify watcher on. ``flush`` and
  ``refresh_interval`` can be overridden for a run.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

from bench.common import check_alive, file_tail

PARSERS = """\
[PARSER]
    Name         docker
    Format       json
    Time_Key     time
    Time_Format  %Y-%m-%dT%H:%M:%S.%L
    Time_Keep    On
"""


def binary() -> str | None:
    """``$FLUENT_BIT`` when it names an executable file, else None."""
    path = os.environ.get("FLUENT_BIT")
    if not path:
        return None
    found = shutil.which(path)
    return found if found and os.access(found, os.X_OK) else None


def version(exe: str) -> str:
    try:
        out = subprocess.run(
            [exe, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    first = out.strip().splitlines()[0] if out.strip() else "unknown"
    return first.removeprefix("Fluent Bit ").strip()


class FluentBit:
    """One Fluent Bit process tailing ``glob`` (one pattern, or several separated by commas:
    tail's ``Path`` is a list) into ``<workdir>/out.ndjson``."""

    def __init__(
        self,
        exe: str,
        workdir: Path,
        glob: str,
        *,
        flush: float | None = None,
        refresh_interval: int | None = None,
        read_from_head: bool = True,
    ) -> None:
        self.exe = exe
        self.workdir = workdir
        self.glob = glob
        self.flush = flush
        self.refresh_interval = refresh_interval
        self.read_from_head = read_from_head
        self.output_path = workdir / "out.ndjson"
        self.config_path = workdir / "fluent-bit.conf"
        self.parsers_path = workdir / "parsers.conf"
        self.db_path = workdir / "tail.db"
        self.stderr_path = workdir / "fluent-bit.stderr"
        self.proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def config(self) -> str:
        service = ["[SERVICE]", "    Log_Level    warn", "    HTTP_Server  Off"]
        service.append(f"    Parsers_File {self.parsers_path}")
        if self.flush is not None:
            service.append(f"    Flush        {self.flush:g}")
        tail = [
            "[INPUT]",
            "    Name             tail",
            "    Tag              bench",
            f"    Path             {self.glob}",
            "    Parser           docker",
            f"    DB               {self.db_path}",
            "    Path_Key         filename",
            f"    Read_from_Head   {'On' if self.read_from_head else 'Off'}",
        ]
        if self.refresh_interval is not None:
            tail.append(f"    Refresh_Interval {self.refresh_interval}")
        out = [
            "[OUTPUT]",
            "    Name   file",
            "    Match  *",
            f"    Path   {self.workdir}",
            f"    File   {self.output_path.name}",
            "    Format plain",
        ]
        return "\n".join([*service, "", *tail, "", *out, ""])

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.parsers_path.write_text(PARSERS)
        self.config_path.write_text(self.config())
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [self.exe, "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )

    def check_alive(self) -> None:
        check_alive(self.proc, "fluent-bit", self.stderr_path)

    def stderr_tail(self, lines: int = 20) -> str:
        return file_tail(self.stderr_path, lines)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM (Fluent Bit flushes what it holds, within its grace period), then wait."""
        proc = self.proc
        if proc is None:
            return 0
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self.returncode = proc.returncode
        return proc.returncode
