"""Click-tracking links (pure): the link record, its id, the rules a target URL must meet,
and the event one follow of a link counts (its name and dims, `link=<id>`, the `utm_*`
query parameters that are valid dims)."""

from __future__ import annotations

import re
import secrets
import string
from collections.abc import Mapping
from urllib.parse import urlsplit

import msgspec

from counters.core.errors import BadRequest
from counters.core.models import (
    DIM_NAME_PATTERN,
    DIM_VALUE_PATTERN,
    MAX_DIM_VALUE_BYTES,
    MAX_DIMS,
    EventWire,
)

LINK_ID_ALPHABET = string.ascii_lowercase + string.digits
LINK_ID_LENGTH = 12
"""12 of 36 characters: 62 bits, so ids cannot be guessed or enumerated."""
LINK_ID_PATTERN = re.compile(f"[a-z0-9]{{{LINK_ID_LENGTH}}}")
LINK_DIM = "link"
"""The dim every followed link's event carries: the link's id."""
DEFAULT_NAME = "click"
MAX_TARGET_CHARS = 2048
UTM_PREFIX = "utm_"
UID_COOKIE = "counters_uid"
"""First-party cookie holding the clicker's uid (set on the first follow when absent)."""
UID_COOKIE_PATTERN = re.compile("[A-Za-z0-9_-]{16,64}")


def _whole(pattern: str) -> re.Pattern[str]:
    """An anchored pattern (`^…\\Z` or `^…$`) without its anchors, for fullmatch."""
    return re.compile(pattern.removeprefix("^").removesuffix("\\Z").removesuffix("$"))


_DIM_NAME = _whole(DIM_NAME_PATTERN)
_DIM_VALUE = _whole(DIM_VALUE_PATTERN)


class Link(msgspec.Struct, frozen=True):
    """A registered link: following /r/<id> counts `name` with `dims` (plus link=<id>) in
    `project` and redirects to `target`, until disabled."""

    id: str
    project: str
    target: str
    name: str
    dims: dict[str, str]
    created_at: str
    disabled_at: str | None = None

    @property
    def active(self) -> bool:
        """Whether /r/<id> redirects (not disabled)."""
        return self.disabled_at is None


def new_link_id() -> str:
    """A fresh random link id (LINK_ID_PATTERN)."""
    return "".join(secrets.choice(LINK_ID_ALPHABET) for _ in range(LINK_ID_LENGTH))


def is_link_id(text: str) -> bool:
    """Whether text has the shape of a link id (anything else is surely unknown)."""
    return LINK_ID_PATTERN.fullmatch(text) is not None


def check_target(url: str) -> str:
    """The target URL if it is an absolute http(s) URL with a host, no credentials, no
    whitespace or control characters and at most MAX_TARGET_CHARS; BadRequest naming
    what is wrong otherwise. Only a target checked here is ever redirected to."""
    if len(url) > MAX_TARGET_CHARS:
        raise BadRequest(f"target: longer than {MAX_TARGET_CHARS} characters")
    if any(c.isspace() or ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in url):
        raise BadRequest("target: may not contain whitespace or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise BadRequest(f"target: not a URL ({exc})") from exc
    if parts.scheme not in ("http", "https"):
        raise BadRequest("target: must be an absolute http:// or https:// URL")
    if not parts.hostname:
        raise BadRequest("target: must name a host")
    if parts.username is not None or parts.password is not None:
        raise BadRequest("target: may not carry a user or password")
    if "\\" in url:
        raise BadRequest("target: may not contain a backslash")
    return url


def parse_dims(pairs: tuple[str, ...]) -> dict[str, str]:
    """`k=v` pairs (the CLI's --dim) as dims; BadRequest for a pair without `=`, a bad
    name or value, the reserved `link` dim, or more than MAX_DIMS - 1 of them."""
    dims: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise BadRequest(f"--dim {pair!r}: expected k=v")
        if key == LINK_DIM:
            raise BadRequest(f"--dim {LINK_DIM}: reserved (every click carries link=<id>)")
        if not valid_dim(key, value):
            raise BadRequest(f"--dim {pair!r}: bad dim name or value")
        dims[key] = value
    if len(dims) > MAX_DIMS - 1:
        raise BadRequest(f"at most {MAX_DIMS - 1} dims (link=<id> is one more)")
    return dims


def valid_dim(name: str, value: str) -> bool:
    """Whether (name, value) is a dim an event may carry."""
    return (
        _DIM_NAME.fullmatch(name) is not None
        and _DIM_VALUE.fullmatch(value) is not None
        and len(value.encode("utf-8", "surrogatepass")) <= MAX_DIM_VALUE_BYTES
    )


def click_event(link: Link, query: Mapping[str, str], uid: str | None) -> EventWire:
    """The event one follow of link counts: its name and dims, link=<id>, and each
    `utm_*` query parameter that is a valid dim (in query order, while fewer than MAX_DIMS
    dims; invalid or surplus ones are left out, never a reason to drop the click)."""
    dims = dict(link.dims)
    dims[LINK_DIM] = link.id
    for key, value in query.items():
        if len(dims) >= MAX_DIMS:
            break
        if key.startswith(UTM_PREFIX) and key not in dims and valid_dim(key, value):
            dims[key] = value
    return EventWire(name=link.name, dims=dims, uid=uid)
