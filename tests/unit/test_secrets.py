"""The masking policy: every header value and url query value is a secret unless known
harmless; a scrubber hides configured secrets in texts the agent did not write."""

from __future__ import annotations

import pytest

from agent.secrets import MASK, Scrubber, is_secret_header, masked_headers, masked_url, url_secrets


@pytest.mark.parametrize(
    "name",
    [
        "Authorization",
        "X-Api-Key",
        "X-Access-Key",
        "X-Private-Key",
        "X-Session-Id",
        "Ocp-Apim-Subscription-Key",
        "X-Honeycomb-Team",
        "X-Insert-Key",
        "DD-API-KEY",
        "X-Anything-New",
    ],
)
def test_headers_are_secret_unless_known_harmless(name: str) -> None:
    assert is_secret_header(name) and is_secret_header(name.lower())


@pytest.mark.parametrize(
    "name",
    [
        "Content-Type",
        "accept",
        "Accept-Encoding",
        "Content-Encoding",
        "User-Agent",
        "X-Scope-OrgID",
    ],
)
def test_harmless_headers(name: str) -> None:
    assert not is_secret_header(name) and not is_secret_header(name.upper())


def test_masked_headers() -> None:
    assert masked_headers({"X-Scope-OrgID": "team-a", "X-Insert-Key": "k", "X-Empty": ""}) == {
        "X-Scope-OrgID": "team-a",
        "X-Insert-Key": MASK,
        "X-Empty": "",
    }


def test_masked_url_hides_password_query_values_and_fragment() -> None:
    url = "https://u:pw@logs.example:8443/v1/input?api_key=k1&dd-api-key=k2&flag&token=t%2F3#f"
    masked = masked_url(url)
    assert masked == (
        f"https://u:{MASK}@logs.example:8443/v1/input"
        f"?api_key={MASK}&dd-api-key={MASK}&flag&token={MASK}#{MASK}"
    )
    assert masked_url("http://h/x") == "http://h/x"


def test_url_secrets_in_every_written_form() -> None:
    found = set(url_secrets("http://u:p%40ss@h/?token=a%2Fb&q=x y&e="))
    assert {"p@ss", "a/b", "a%2Fb", "x y", "x%20y"} <= found
    assert "" not in found and "token" not in found


def test_scrubber_hides_long_secrets_anywhere_and_short_ones_alone() -> None:
    scrub = Scrubber(["tok-0123456789", "tok-0123456789-long", "s3ss", "1", ""])
    assert scrub("Bearer tok-0123456789-long,x=tok-0123456789") == f"Bearer {MASK},x={MASK}"
    assert scrub("xtok-0123456789y") == f"x{MASK}y"  # 8 characters or more: anywhere
    assert scrub('{"session":"s3ss","n":1}') == f'{{"session":"{MASK}","n":{MASK}}}'
    assert scrub("s3ssion 10 HTTP/1.1") == f"s3ssion 10 HTTP/{MASK}.{MASK}"
    assert Scrubber()("nothing to hide") == "nothing to hide"
