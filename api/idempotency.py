"""The `Idempotency-Key` request header of POST /v1/events (IETF
draft-ietf-httpapi-idempotency-key-header): parsing it and naming its marker."""

from __future__ import annotations

import hashlib
import re

from starlette.requests import Request

from counters.core.errors import BadRequest
from counters.engines.ingest import Idempotency
from lua.keys import idempotency_token

HEADER = "idempotency-key"
REPLAYED_HEADER = "Idempotency-Replayed"
MAX_KEY_LENGTH = 255
_KEY = re.compile(r"[\x20-\x7e]{1,255}\Z")


def idempotency_of(request: Request, body: bytes) -> Idempotency | None:
    """The request's Idempotency-Key (a structured-field string `"…"` or the bare text) with
    the hash of its body, or None without the header; 400 when the key is empty, longer
    than 255 characters or not printable ASCII."""
    raw = request.headers.getlist(HEADER)
    if not raw:
        return None
    if len(raw) > 1:
        raise BadRequest("send one Idempotency-Key header", code="bad_idempotency_key")
    key = raw[0]
    if len(key) >= 2 and key[0] == key[-1] == '"':
        key = key[1:-1]
    if not _KEY.match(key):
        raise BadRequest(
            f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable ASCII characters",
            code="bad_idempotency_key",
        )
    return Idempotency(idempotency_token(key), hashlib.blake2b(body, digest_size=16).hexdigest())
