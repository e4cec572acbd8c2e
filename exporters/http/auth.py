"""The http exporter's request headers and the secrets they hold.

Headers come from ``headers`` (``${VAR}`` expanded from the environment), ``auth`` (a
bearer token or basic auth, from the config or the environment) or credentials in the url.
Every secret among them (``agent.secrets``: every header value but the few harmless ones,
the token, the password and the base64 of ``user:password``, and the url's password and
query values) is handed to a ``Scrubber``, so that response excerpts and error texts that
echo one are cleaned before they are logged, shown in ``/readyz`` or dead-lettered.
"""

from __future__ import annotations

import base64
import os
import re

from yarl import URL

from agent import __version__
from agent.secrets import Scrubber, is_secret_header, url_secrets
from exporters.http.config import HttpConfig

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_env(value: str, what: str) -> str:
    """Replaces every ``${VAR}`` in ``value``; an unset variable is an error naming it."""

    def one(match: re.Match[str]) -> str:
        found = os.environ.get(match[1])
        if found is None:
            raise ValueError(f"{what}: environment variable {match[1]} is not set")
        return found

    return _ENV_REF.sub(one, value)


def _env_secret(name: str, what: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise ValueError(f"{what}: environment variable {name} is not set or empty")
    return value


def build_headers(
    config: HttpConfig, name: str, content_type: str
) -> tuple[dict[str, str], Scrubber]:
    """The headers of every request, and a scrubber of the secrets among them. Raises
    ValueError naming the key when an environment variable is missing."""
    headers = {"User-Agent": f"container-agent/{__version__}"}
    headers["Content-Type"] = content_type
    if config.compression == "gzip":
        headers["Content-Encoding"] = "gzip"
    secrets: list[str] = []
    for key, raw in config.headers.items():
        value = expand_env(raw, f"exporters.{name}.headers.{key}")
        headers[key] = value
        if is_secret_header(key):
            secrets += _value_secrets(value)
    auth = config.auth
    token = None
    if auth.bearer_token is not None:
        token = auth.bearer_token.get_secret_value()
    elif auth.bearer_token_env is not None:
        token = _env_secret(auth.bearer_token_env, f"exporters.{name}.auth")
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
        secrets.append(token)
    user, password = None, None
    if auth.basic.user is not None:
        user = auth.basic.user
        if auth.basic.password is not None:
            password = auth.basic.password.get_secret_value()
        else:
            assert auth.basic.password_env is not None
            password = _env_secret(auth.basic.password_env, f"exporters.{name}.auth")
    else:
        url = URL(config.url)
        if url.user is not None:
            user, password = url.user, url.password or ""
    if user is not None:
        creds = base64.b64encode(f"{user}:{password}".encode()).decode()
        headers["Authorization"] = f"Basic {creds}"
        secrets += [s for s in (password, creds) if s]
    secrets += url_secrets(config.url)
    return headers, Scrubber(secrets)


def _value_secrets(value: str) -> list[str]:
    """A secret header value, and the parts an echo may show alone: the credentials after
    a scheme (``Bearer x``, ``Splunk x``) and, for ``Basic``, the decoded ``user:password``
    and the password."""
    out = [value]
    scheme, _, rest = value.strip().partition(" ")
    rest = rest.strip()
    if rest:
        out.append(rest)
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(rest, validate=True).decode()
            except (ValueError, UnicodeDecodeError):
                decoded = ""
            if decoded:
                out += [decoded, decoded.partition(":")[2]]
    return out
