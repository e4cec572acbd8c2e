"""The http exporter's options, declared once: validation, ``check-config`` (with every
secret masked) and the reference all come from these models.

Masking follows ``agent.secrets``: every header value but those of a few harmless headers,
and the url's password and query values, are printed as ``**********`` by ``check-config``
(the serializers below) and by the config's ``repr``; ``SecretStr`` fields hide themselves.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

from pydantic import Field, SecretStr, field_serializer, field_validator, model_validator
from yarl import URL

from agent.retry import DEFAULT_INITIAL_SECONDS, DEFAULT_MAX_SECONDS
from agent.secrets import masked_headers, masked_url
from agent.section import Section, empty_list
from exporters.base import ExporterConfig
from exporters.http.formats.loki import DEFAULT_LABELS, check_label_field


class BatchConfig(Section):
    max_records: int = Field(1000, ge=1, description="Most records in one request.")
    max_bytes: int = Field(
        1024 * 1024,
        ge=1024,
        description="Most bytes in one request body, before compression (a single larger "
        "record still goes, alone).",
    )
    max_seconds: float = Field(
        1.0,
        ge=0,
        description="While records trickle, the longest a record waits for others to share "
        "its request (0: send at once).",
    )


class RetryConfig(Section):
    initial_backoff_seconds: float = Field(
        DEFAULT_INITIAL_SECONDS,
        gt=0,
        description="Back-off ceiling after the first failure (doubles each retry).",
    )
    max_backoff_seconds: float = Field(
        DEFAULT_MAX_SECONDS, gt=0, description="Cap of the back-off (full jitter) between retries."
    )
    max_retry_after_seconds: float = Field(
        300.0,
        ge=0,
        description="Longest wait a `Retry-After` header (429, 503) is honoured for.",
    )


class BasicAuthConfig(Section):
    user: str | None = Field(None, description="User name for HTTP basic auth.")
    password: SecretStr | None = Field(None, description="Its password (prefer `password_env`).")
    password_env: str | None = Field(None, description="Environment variable holding the password.")


class AuthConfig(Section):
    bearer_token: SecretStr | None = Field(
        None, description="Sends `Authorization: Bearer <token>` (prefer `bearer_token_env`)."
    )
    bearer_token_env: str | None = Field(
        None, description="Environment variable holding the bearer token."
    )
    basic: BasicAuthConfig = Field(
        default_factory=BasicAuthConfig, description="HTTP basic auth (set `user` to use it)."
    )

    @model_validator(mode="after")
    def _one_method(self) -> AuthConfig:
        bearer = self.bearer_token is not None or self.bearer_token_env is not None
        if self.bearer_token is not None and self.bearer_token_env is not None:
            raise ValueError("set bearer_token or bearer_token_env, not both")
        basic = self.basic
        if basic.user is None and (basic.password is not None or basic.password_env is not None):
            raise ValueError("basic: a password needs a user")
        if basic.user is not None:
            if bearer:
                raise ValueError("set a bearer token or basic auth, not both")
            if (basic.password is None) == (basic.password_env is None):
                raise ValueError("basic: set exactly one of password and password_env")
        return self


class TlsConfig(Section):
    verify: bool = Field(True, description="Verify the server's certificate and host name.")
    ca_file: str | None = Field(
        None, description="PEM bundle of CAs to trust instead of the system's."
    )


class LokiConfig(Section):
    labels: list[str] = Field(
        default_factory=lambda: list(DEFAULT_LABELS),
        description="Record fields that become stream labels (`container_name`, "
        "`container_id`, `image`, `host`, `project`, `service`, `stream`, `kind`, "
        "`level` (from processing), or "
        "`label.<container label>`); keep them low-cardinality. Default: `container_name`, "
        "`stream`, `host`, `project`, `service`.",
    )
    line_format: Literal["message", "json"] = Field(
        "message",
        description="Log line of a log record: its message, or the whole record as JSON "
        "(events and stats are always JSON).",
    )

    @field_validator("labels")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        return [check_label_field(v) for v in value]


class ElasticsearchConfig(Section):
    index: str = Field(
        "container-logs-%Y.%m.%d",
        description="Index or data stream; strftime fields take each record's timestamp (UTC).",
    )
    action: Literal["create", "index"] = Field(
        "create", description="Bulk action (data streams take only `create`)."
    )
    pipeline: str | None = Field(None, description="Ingest pipeline (`?pipeline=`).")
    id: Literal["deterministic", "none"] = Field(
        "deterministic",
        description="Document `_id`s. `deterministic` (default): each record always gets "
        "the same id (container id, stream, timestamp, crc32 of the message, occurrence "
        "among identical lines), so that a request sent again after a timeout, or records "
        "read again after a crash, are no-ops (`create` answers 409, counted as delivered) "
        "or overwrite themselves (`index`): the agent delivers at least once, the index "
        "holds each line once. `none`: the backend makes ids (a little less work for both; "
        "duplicates after retries and replays). Limit: two lines of one stream with the "
        "same nanosecond timestamp and the same message, an agent restart between them, "
        "share an id (the index keeps one).",
    )


class OtlpConfig(Section):
    container_labels: list[str] = Field(
        default_factory=empty_list,
        description="Container labels to add as resource attributes `container.label.<key>`.",
    )


class HttpConfig(ExporterConfig):
    type: Literal["http"] = Field(description="POST records to an HTTP backend.")
    url: str = Field(
        description="Endpoint. Without a path, the format's is used: `/loki/api/v1/push`, "
        "`/_bulk`, `/v1/logs`. A password and query values (`?api_key=…`) are secrets: "
        "masked in `check-config`, never in logs or `/readyz`."
    )
    format: Literal["ndjson", "loki", "elasticsearch", "otlp"] = Field(
        "ndjson", description="Request body: NDJSON records, Loki push, `_bulk`, OTLP/JSON logs."
    )
    compression: Literal["gzip", "none"] = Field(
        "gzip", description="Request body compression (`Content-Encoding`)."
    )
    compression_level: int = Field(
        1, ge=1, le=9, description="gzip level: 1 is fastest, 9 smallest."
    )
    batch: BatchConfig = Field(default_factory=BatchConfig, description="Request size and time.")
    retry: RetryConfig = Field(default_factory=RetryConfig, description="Retries (forever).")
    headers: dict[str, str] = Field(
        default_factory=dict,
        description="Extra request headers; `${VAR}` in a value is replaced by the environment "
        "variable. Every value is treated as a secret (masked in `check-config`, scrubbed "
        "from logged answers) except those of `Accept`, `Accept-Encoding`, `Content-Type`, "
        "`Content-Encoding`, `User-Agent` and `X-Scope-OrgID`.",
    )
    auth: AuthConfig = Field(default_factory=AuthConfig, description="Authentication.")
    tls: TlsConfig = Field(default_factory=TlsConfig, description="TLS for `https://` urls.")
    timeout_seconds: float = Field(10.0, gt=0, description="Timeout of one request.")
    dead_letter_path: str | None = Field(
        None,
        description="NDJSON file for records a backend rejects for good (4xx); default "
        "`<state_dir>/dead-letter/<exporter name>.ndjson`.",
    )
    dead_letter_max_bytes: int = Field(
        100 * 1024 * 1024,
        ge=0,
        description="Size cap of the dead-letter file (default 100 MiB): rejected records "
        "that would take it past this are dropped instead, counted "
        "(`dead_letter_dropped_records`) and logged once per run of drops "
        "(`http_dead_letter_full`); like dead-lettered ones they count as handled. Moving "
        "or truncating the file makes room again. 0: drop every rejected record.",
    )
    loki: LokiConfig = Field(default_factory=LokiConfig, description="`format: loki` options.")
    elasticsearch: ElasticsearchConfig = Field(
        default_factory=ElasticsearchConfig, description="`format: elasticsearch` options."
    )
    otlp: OtlpConfig = Field(default_factory=OtlpConfig, description="`format: otlp` options.")

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        try:
            url = URL(value)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"not a url: {exc}") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("expected http://host[:port][/path] or https://…")
        return value

    @model_validator(mode="after")
    def _no_double_auth(self) -> HttpConfig:
        auth = self.auth
        configured = (
            auth.bearer_token is not None
            or auth.bearer_token_env is not None
            or auth.basic.user is not None
        )
        if URL(self.url).user is not None and configured:
            raise ValueError("credentials in the url and in auth: use one")
        if configured and any(k.lower() == "authorization" for k in self.headers):
            raise ValueError("an Authorization header and auth: use one")
        return self

    @field_serializer("url")
    def _mask_url(self, value: str) -> str:
        return masked_url(value)

    @field_serializer("headers")
    def _mask_headers(self, value: dict[str, str]) -> dict[str, str]:
        return masked_headers(value)

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for key, value in super().__repr_args__():
            if key == "url":
                value = masked_url(value)
            elif key == "headers":
                value = masked_headers(value)
            yield key, value
