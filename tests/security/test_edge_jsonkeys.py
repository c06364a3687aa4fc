"""The cheap duplicate-key test never misses a duplicate (it may only send a clean body to
the slow exact pass), and the exact pass names the culprit."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from api.ingest import decode_events
from counters.core.errors import Invalid
from counters.core.jsonkeys import explain, may_have_duplicates
from counters.core.models import batch_decoder

text = st.text(alphabet=st.sampled_from('ab:\\"é x'), min_size=1, max_size=6)
fields = st.fixed_dictionaries(
    {"name": st.just("click")},
    optional={
        "ts": st.one_of(st.none(), st.integers(0, 10**12), text),
        "id": st.one_of(st.none(), text),
        "uid": st.one_of(st.none(), text),
        "value": st.one_of(st.none(), st.floats(-1e6, 1e6)),
        "dims": st.dictionaries(st.sampled_from(["a", "b", "c"]), text, max_size=3),
    },
)


def encode(members: list[tuple[str, Any]], ascii_only: bool) -> str:
    """One JSON object with these members in this order (duplicates kept)."""

    def dumps(v: Any) -> str:
        return json.dumps(v, ensure_ascii=ascii_only)

    parts = []
    for key, value in members:
        if isinstance(value, dict):
            value_text = "{" + ",".join(f"{dumps(k)}:{dumps(v)}" for k, v in value.items()) + "}"
        else:
            value_text = json.dumps(value, ensure_ascii=ascii_only)
        parts.append(f"{json.dumps(key)}:{value_text}")
    return "{" + ",".join(parts) + "}"


@settings(max_examples=300, deadline=None)
@given(
    events=st.lists(fields, min_size=1, max_size=4),
    dup_at=st.integers(0, 3),
    dup_field=st.sampled_from(["name", "ts", "id", "uid", "dims"]),
    dup_value=text,
    ascii_only=st.booleans(),
    escape_colon=st.booleans(),
)
def test_a_duplicate_is_never_missed(
    events: list[dict[str, Any]],
    dup_at: int,
    dup_field: str,
    dup_value: str,
    ascii_only: bool,
    escape_colon: bool,
) -> None:
    index = dup_at % len(events)
    objects = []
    for i, ev in enumerate(events):
        members = list(ev.items())
        if i == index:
            members.insert(0, (dup_field, {"a": dup_value} if dup_field == "dims" else dup_value))
            members.append(
                (dup_field, ev.get(dup_field, {"a": "x"} if dup_field == "dims" else "x"))
            )
        objects.append(encode(members, ascii_only))
    body = ("[" + ",".join(objects) + "]").encode()
    if escape_colon:
        body = body.replace(b':"', b':"\\u003a', 1)
    decoded = batch_decoder.decode(body)
    assert may_have_duplicates(body, decoded)
    found = explain(body, ndjson=False)
    assert found is not None and found.code == "duplicate_key"
    assert found.message.startswith(f"$[{index}].{dup_field}")


@settings(max_examples=200, deadline=None)
@given(events=st.lists(fields, min_size=1, max_size=5), ascii_only=st.booleans())
def test_clean_bodies_decode(events: list[dict[str, Any]], ascii_only: bool) -> None:
    body = ("[" + ",".join(encode(list(e.items()), ascii_only) for e in events) + "]").encode()
    try:
        assert len(decode_events(body, "application/json")) == len(events)
    except Invalid as exc:  # pragma: no cover - a clean body must pass
        raise AssertionError(exc.message) from exc
