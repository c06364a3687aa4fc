"""What the service knows about an API key once it is looked up (KeyInfo), the scopes,
and the pure rules of the key lifecycle: durations (`30d`), origins (scheme://host[:port])
and whether a key is usable at a given time."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import msgspec

SCOPES = ("ingest", "read", "admin", "pixel")
"""Every key scope. pixel: single events from browsers (optionally origin- and
name-restricted); it cannot read."""
INGEST_SCOPES = frozenset({"ingest", "pixel", "admin"})
"""Scopes that may write events."""
MAX_DURATION_SECONDS = 10 * 365 * 86_400
"""Longest --expires / --grace accepted (10 years)."""
MAX_ORIGINS = 32
MAX_NAMES = 256

KEY_ID_PATTERN = re.compile(r"^k_[A-Za-z0-9_-]{10}\Z")
"""A key's public id: `k_` + 10 url-safe characters."""

_DURATION = re.compile(r"^([0-9]{1,9})([smhd])\Z")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
_DEFAULT_PORT = {"http": 80, "https": 443}


class KeyInfo(msgspec.Struct, frozen=True):
    """One key as authorization sees it. projects[0] is the key's own project."""

    id: str
    projects: tuple[str, ...]
    scope: str
    origins: tuple[str, ...] = ()
    """Allowed browser origins (normalised scheme://host[:port]); empty = any."""
    names: tuple[str, ...] = ()
    """Allowed event names; empty = any."""
    expires_at: int | None = None
    """Epoch ms after which the key is refused; None = never."""

    def expired(self, now_ms: int, override_ms: int | None = None) -> bool:
        """Whether the key is past its expiry (the earlier of its own and override_ms)."""
        ends = [t for t in (self.expires_at, override_ms) if t is not None]
        return bool(ends) and now_ms >= min(ends)


def parse_duration(text: str) -> int:
    """Seconds of `30d`, `12h`, `15m` or `3600s` (1 s .. 10 years); ValueError otherwise."""
    m = _DURATION.match(text.strip())
    if m is None:
        raise ValueError(f"duration {text!r} must look like 30d, 12h, 15m or 3600s")
    seconds = int(m.group(1)) * _UNIT[m.group(2)]
    if not 0 < seconds <= MAX_DURATION_SECONDS:
        raise ValueError(f"duration {text!r} must be between 1s and 3650d")
    return seconds


def normalize_origin(text: str) -> str | None:
    """`scheme://host[:port]` of an Origin header or URL (lowercase, default port dropped),
    or None when it is not an http(s) URL with a host (e.g. the `null` origin)."""
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if scheme not in _DEFAULT_PORT or not host:
        return None
    if ":" in host:
        host = f"[{host}]"
    if port is None or port == _DEFAULT_PORT[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def parse_origin(text: str) -> str:
    """An allowed origin as given to --origin, normalised; ValueError unless it is exactly
    scheme://host[:port] (http or https, no path, query or credentials)."""
    origin = normalize_origin(text)
    parts = urlsplit(text.strip())
    if (
        origin is None
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or parts.username is not None
    ):
        raise ValueError(f"origin {text!r} must be scheme://host[:port], e.g. https://shop.example")
    return origin


class KeyRecord(msgspec.Struct, frozen=True):
    """A key as `keys list` and GET /v1/projects/{p}/keys show it: never the secret nor its
    hash. Times are RFC 3339 UTC, or null."""

    id: str
    projects: list[str]
    scope: str
    created_at: str
    last_used_at: str | None
    expires_at: str | None
    revoked_at: str | None
    origins: list[str]
    names: list[str]


class NewKey(msgspec.Struct, frozen=True):
    """A key just created or rotated: the secret is in `key`, shown this once."""

    id: str
    key: str
    projects: list[str]
    scope: str
    expires_at: str | None
    origins: list[str]
    names: list[str]
