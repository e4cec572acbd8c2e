"""Test certificates made with the ``openssl`` command (the ``cryptography`` package is not
a dependency): a CA, a server certificate for 127.0.0.1 and a client certificate signed by
it, and a second CA that signed neither (a wrong CA). EC P-256 keys: quick to make."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

_CA_EXT = [
    "-addext",
    "basicConstraints=critical,CA:TRUE",
    "-addext",
    "keyUsage=critical,keyCertSign,cRLSign",
]


@dataclass(frozen=True)
class Certs:
    directory: Path  # DOCKER_CERT_PATH layout: ca.pem, cert.pem, key.pem (the client's)
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    wrong_ca: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def _key(name: str, cwd: Path) -> None:
    _openssl(
        "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", name, cwd=cwd
    )


def _ca(name: str, cwd: Path) -> None:
    _key(f"{name}-key.pem", cwd)
    _openssl(
        "req", "-x509", "-new", "-key", f"{name}-key.pem", "-out", f"{name}.pem",
        "-days", "2", "-subj", f"/CN={name}", *_CA_EXT, cwd=cwd,
    )  # fmt: skip


def _leaf(name: str, ext: str, cwd: Path) -> None:
    _key(f"{name}-key.pem", cwd)
    _openssl("req", "-new", "-key", f"{name}-key.pem", "-out", f"{name}.csr",
             "-subj", f"/CN={name}", cwd=cwd)  # fmt: skip
    (cwd / f"{name}.ext").write_text(ext)
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem",
        "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
        cwd=cwd,
    )  # fmt: skip


def make_certs(directory: Path, server_names: str = "IP:127.0.0.1") -> Certs:
    """Writes the certificates under ``directory``; ``server_names``: the server
    certificate's subjectAltName (only 127.0.0.1: ``localhost`` does not match it)."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make test certificates")
    directory.mkdir(parents=True, exist_ok=True)
    _ca("ca", directory)
    _ca("wrong-ca", directory)
    leaf = "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
    _leaf(
        "server", f"{leaf}extendedKeyUsage=serverAuth\nsubjectAltName={server_names}\n", directory
    )
    _leaf("client", f"{leaf}extendedKeyUsage=clientAuth\n", directory)
    (directory / "cert.pem").write_bytes((directory / "client.pem").read_bytes())
    (directory / "key.pem").write_bytes((directory / "client-key.pem").read_bytes())
    return Certs(
        directory=directory,
        ca=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server-key.pem",
        client_cert=directory / "cert.pem",
        client_key=directory / "key.pem",
        wrong_ca=directory / "wrong-ca.pem",
    )
