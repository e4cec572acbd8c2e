"""TLS to a ``tcp://`` engine, set up the way the Docker CLI does it.

The settings default to the CLI's environment: ``DOCKER_TLS_VERIFY`` (any non-empty
value) verifies the engine's certificate and host name; ``DOCKER_CERT_PATH`` (default
``~/.docker`` when ``DOCKER_TLS_VERIFY`` is set) holds ``ca.pem``, ``cert.pem`` and
``key.pem``. Without verification, files of the certificate directory that do not exist
are left out, as the CLI does; with it, a missing file is an error.

One ``ssl.SSLContext`` is built from the settings and used for every call to the engine
and for the log streams. Verification checks the chain against ``ca_file`` alone (else the
system's CAs) and the engine's host name or IP address against the certificate, as Go's
TLS client does for the CLI. ``verify: false`` still encrypts and still presents the
client certificate (an engine started with ``--tlsverify`` asks for one).
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable
from pathlib import Path

from pydantic import Field, model_validator

from agent.section import Section


class TlsError(Exception):
    """The TLS settings cannot be used (a file missing or unreadable, a key that does not
    match its certificate); the message names the key and the file."""


def _cert_dir() -> Path | None:
    path = os.environ.get("DOCKER_CERT_PATH")
    if path:
        return Path(path)
    if os.environ.get("DOCKER_TLS_VERIFY"):
        return Path.home() / ".docker"
    return None


def _env_file(name: str) -> str | None:
    """``$DOCKER_CERT_PATH/<name>``; without ``DOCKER_TLS_VERIFY`` only when it exists."""
    directory = _cert_dir()
    if directory is None:
        return None
    path = directory / name
    if not os.environ.get("DOCKER_TLS_VERIFY") and not path.is_file():
        return None
    return str(path)


class TlsConfig(Section):
    """TLS to a `tcp://` engine: used when `verify` is true or any of the files is set."""

    verify: bool = Field(
        default_factory=lambda: bool(os.environ.get("DOCKER_TLS_VERIFY")),
        description="Verify the engine's certificate (against `ca_file`, else the system's "
        "CAs) and that it names the host (or IP address) of `engine.host`; default: true "
        "when `$DOCKER_TLS_VERIFY` is set to anything, as for the Docker CLI. `false` with "
        "a `cert_file` still encrypts and still presents the client certificate.",
    )
    ca_file: str | None = Field(
        default_factory=lambda: _env_file("ca.pem"),
        description="PEM bundle of CAs to trust instead of the system's; default "
        "`$DOCKER_CERT_PATH/ca.pem` (`~/.docker/ca.pem` when only `$DOCKER_TLS_VERIFY` is "
        "set; without verification only if it exists).",
    )
    cert_file: str | None = Field(
        default_factory=lambda: _env_file("cert.pem"),
        description="The client certificate (PEM) the engine asks for; default "
        "`$DOCKER_CERT_PATH/cert.pem`, like `ca_file`.",
    )
    key_file: str | None = Field(
        default_factory=lambda: _env_file("key.pem"),
        description="The client certificate's private key (PEM, unencrypted; a path, the "
        "key itself is never printed); default `$DOCKER_CERT_PATH/key.pem`, like `ca_file`.",
    )

    @model_validator(mode="after")
    def _pair(self) -> TlsConfig:
        if bool(self.cert_file) != bool(self.key_file):
            given, missing = (
                ("cert_file", "key_file") if self.cert_file else ("key_file", "cert_file")
            )
            raise ValueError(f"{given} is set but {missing} is not: they go together")
        return self

    @property
    def enabled(self) -> bool:
        """Whether a ``tcp://`` engine is reached over TLS."""
        return self.verify or bool(self.ca_file or self.cert_file or self.key_file)

    def describe(self) -> str:
        """The settings in one line, for error messages."""
        parts = [f"verify={'true' if self.verify else 'false'}"]
        if self.verify:
            parts.append(f"ca_file={self.ca_file}" if self.ca_file else "the system's CAs")
        if self.cert_file:
            parts.append(f"cert_file={self.cert_file}")
        return ", ".join(parts)


def client_context(tls: TlsConfig) -> ssl.SSLContext:
    """The client side of TLS to the engine; raises TlsError naming the key and the file."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, check_hostname
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # the engine's own minimum
    if tls.verify:
        if tls.ca_file:
            _load(ctx.load_verify_locations, "ca_file", tls.ca_file, cafile=tls.ca_file)
        else:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if tls.cert_file and tls.key_file:
        _load(
            ctx.load_cert_chain,
            "cert_file/key_file",
            f"{tls.cert_file}, {tls.key_file}",
            certfile=tls.cert_file,
            keyfile=tls.key_file,
        )
    return ctx


def _load(load: Callable[..., object], key: str, path: str, **kwargs: str) -> None:
    try:
        load(**kwargs)
    except ssl.SSLError as exc:  # an OSError too: first
        reason = exc.reason or exc.strerror or str(exc)
        raise TlsError(f"engine.tls.{key}: not usable ({path}): {reason}") from None
    except FileNotFoundError as exc:
        raise TlsError(f"engine.tls.{key}: no such file: {exc.filename or path}") from None
    except OSError as exc:
        raise TlsError(
            f"engine.tls.{key}: cannot read {exc.filename or path}: {exc.strerror or exc}"
        ) from None
