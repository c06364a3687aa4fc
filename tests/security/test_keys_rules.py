"""The pure key rules: durations, origins, expiry (counters/core/keys.py)."""

from __future__ import annotations

import pytest

from counters.core.keys import KeyInfo, normalize_origin, parse_duration, parse_origin


@pytest.mark.parametrize(
    ("text", "seconds"), [("30d", 2_592_000), ("12h", 43_200), ("15m", 900), ("3600s", 3600)]
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0s", "10", "1w", "-1d", "3651d", "1.5h", "999999999d"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("header", "origin"),
    [
        ("https://shop.example", "https://shop.example"),
        ("HTTPS://Shop.Example:443", "https://shop.example"),
        ("http://shop.example:80/x?y", "http://shop.example"),
        ("http://localhost:8080", "http://localhost:8080"),
        ("http://[::1]:8080/", "http://[::1]:8080"),
        ("null", None),
        ("file:///etc/passwd", None),
        ("https://", None),
        ("https://a.example:99999", None),
    ],
)
def test_normalize_origin(header: str, origin: str | None) -> None:
    assert normalize_origin(header) == origin


@pytest.mark.parametrize(
    "text", ["https://a.example/path", "https://a.example?q", "https://u@a.example", "a.example"]
)
def test_allowed_origin_is_only_scheme_host_port(text: str) -> None:
    with pytest.raises(ValueError, match="origin"):
        parse_origin(text)
    assert parse_origin("https://A.example/") == "https://a.example"


def test_expiry_is_the_earlier_of_own_and_override() -> None:
    key = KeyInfo("k_0123456789", ("p",), "ingest", expires_at=2_000)
    assert not key.expired(1_999) and key.expired(2_000)
    assert key.expired(1_500, override_ms=1_000)
    forever = KeyInfo("k_0123456789", ("p",), "ingest")
    assert not forever.expired(10**15) and forever.expired(5, override_ms=5)
