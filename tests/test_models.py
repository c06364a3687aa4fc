"""Unit tests for counters.core.models: wire decoding (msgspec), validate_events and its
limits, the raw-log batch codec."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from counters.core.buckets import DAY_MS
from counters.core.config import Settings
from counters.core.errors import Invalid
from counters.core.models import (
    EventIn,
    EventLimits,
    EventWire,
    RawEvent,
    batch_decoder,
    decode_raw_batch,
    raw_encoder,
    to_micros,
    validate_events,
)

NOW = 1_795_428_000_000  # 2026-11-23T10:00:00Z
DAY = DAY_MS
MAX_AGE = 30 * DAY
MAX_FUTURE = 300_000
LIMITS = EventLimits(max_age_ms=MAX_AGE, max_future_ms=MAX_FUTURE)


def decode(events: list[dict[str, Any]]) -> list[EventWire]:
    return batch_decoder.decode(msgspec.json.encode(events))


def validate(events: list[EventWire]) -> list[RawEvent]:
    return validate_events(events, now_ms=NOW, limits=LIMITS)


def accept(**fields: Any) -> RawEvent:
    """Decode and validate a single event given as fields; return the stored event."""
    (raw,) = validate(decode([{"name": "click", **fields}]))
    return raw


def rejected_by_decoder(*events: dict[str, Any]) -> str:
    """The error message for a batch that decoding (wrong types, unknown fields) or
    validation (patterns, lengths, ranges) must reject."""
    try:
        validate(decode(list(events)))
    except msgspec.ValidationError as exc:
        return str(exc)
    except Invalid as exc:
        return exc.message
    pytest.fail(f"accepted: {events}")


def rejected_by_validation(*events: dict[str, Any]) -> Invalid:
    decoded = decode(list(events))
    with pytest.raises(Invalid) as info:
        validate(decoded)
    return info.value


# --- a whole event --------------------------------------------------------------------------


def test_full_event_round_trip() -> None:
    (raw,) = validate(
        decode(
            [
                {
                    "name": "page.view",
                    "ts": "2026-11-23T09:59:00.250Z",
                    "id": "evt-1",
                    "dims": {"country": "DE", "source": "web"},
                    "value": 2.5,
                    "uid": "u-42",
                }
            ]
        )
    )
    assert raw == RawEvent(
        "page.view",
        NOW - 59_750,
        "evt-1",
        {"country": "DE", "source": "web"},
        2_500_000,
        "u-42",
        NOW,
    )
    # the raw log holds one list of events per stream entry
    assert decode_raw_batch(raw_encoder.encode([raw])) == [raw]
    assert decode_raw_batch(raw_encoder.encode([raw, raw])) == [raw, raw]
    assert decode_raw_batch(raw_encoder.encode([])) == []


def test_limits_from_settings_are_the_service_defaults() -> None:
    assert EventLimits.from_settings(Settings()) == LIMITS
    custom = Settings(max_event_age_days=2, max_future_seconds=7)
    assert EventLimits.from_settings(custom) == EventLimits(2 * DAY_MS, 7_000)


def test_minimal_event_defaults() -> None:
    raw = accept()
    assert raw == RawEvent("click", NOW, None, {}, 0, None, NOW)


def test_batch_keeps_order_and_received_time() -> None:
    out = validate(decode([{"name": "a"}, {"name": "b", "ts": NOW - 1}, {"name": "c"}]))
    assert [e.name for e in out] == ["a", "b", "c"]
    assert [e.ts for e in out] == [NOW, NOW - 1, NOW]
    assert {e.received for e in out} == {NOW}


def test_empty_batch() -> None:
    assert validate(decode([])) == []


# --- name -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["click", "a", "0", "page.view", "sign-up_2", "a" * 64, "._-"])
def test_name_accepted(name: str) -> None:
    assert accept(name=name).name == name


@pytest.mark.parametrize(
    "name", ["Click", "CLICK", "", "a" * 65, "page view", "click!", "klick/x", "é", "a\x1fb"]
)
def test_name_rejected(name: str) -> None:
    assert "$[0].name" in rejected_by_decoder({"name": name})


def test_name_with_trailing_newline_rejected() -> None:
    assert "$[0].name" in rejected_by_decoder({"name": "click\n"})


def test_name_required() -> None:
    message = rejected_by_decoder({"dims": {}})
    assert "name" in message and "$[0]" in message


def test_error_names_the_index_and_field() -> None:
    message = rejected_by_decoder({"name": "ok"}, {"name": "Bad"})
    assert "$[1].name" in message
    message = rejected_by_decoder({"name": "ok"}, {"name": "ok"}, {"name": "ok", "uid": ""})
    assert "$[2].uid" in message


# --- ts -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        ("2026-11-23T10:00:00Z", NOW),
        ("2026-11-23T11:00:00+01:00", NOW),
        ("2026-11-23T09:30:00.125Z", NOW - 1_799_875),
        (NOW - 5, NOW - 5),
        (str(NOW - 5), NOW - 5),
        (None, NOW),
    ],
)
def test_ts_accepted(ts: str | int | None, expected: int) -> None:
    assert accept(ts=ts).ts == expected


def test_ts_missing_means_now() -> None:
    assert accept().ts == NOW


@pytest.mark.parametrize(
    ("ts", "ok"),
    [
        (NOW - MAX_AGE, True),
        (NOW - MAX_AGE - 1, False),
        ("2026-10-24T10:00:00Z", True),  # exactly 30 days before NOW
        ("2026-10-24T09:59:59.999Z", False),
        (0, False),
    ],
)
def test_ts_too_old(ts: str | int, ok: bool) -> None:
    if ok:
        accept(ts=ts)
        return
    err = rejected_by_validation({"name": "a"}, {"name": "b"}, {"name": "click", "ts": ts})
    assert err.code == "ts_too_old"
    assert err.status == 422
    assert err.message.startswith("$[2].ts")
    assert "30 days" in err.message


@pytest.mark.parametrize(
    ("ts", "ok"),
    [
        (NOW + MAX_FUTURE, True),
        (NOW + MAX_FUTURE + 1, False),
        ("2026-11-23T10:05:00Z", True),
        ("2026-11-23T10:05:00.001Z", False),
        ("2027-01-01T00:00:00Z", False),
    ],
)
def test_ts_in_future(ts: str | int, ok: bool) -> None:
    if ok:
        accept(ts=ts)
        return
    err = rejected_by_validation({"name": "a"}, {"name": "click", "ts": ts})
    assert err.code == "ts_in_future"
    assert err.message.startswith("$[1].ts")
    assert "300 s" in err.message


@pytest.mark.parametrize("ts", ["yesterday", "2026-11-23T10:00:00", "", "2026-11-23"])
def test_ts_unparseable(ts: str) -> None:
    err = rejected_by_validation({"name": "a"}, {"name": "click", "ts": ts})
    assert err.code == "invalid_ts"
    assert err.message.startswith("$[1].ts")


@pytest.mark.parametrize("ts", [True, 1.5, 1.795428e12, [], {}])
def test_ts_wrong_type(ts: Any) -> None:
    assert "$[0].ts" in rejected_by_decoder({"name": "click", "ts": ts})


# --- id -------------------------------------------------------------------------------------


@pytest.mark.parametrize("event_id", ["x", "a" * 128, "évènement-1", "with space"])
def test_id_accepted(event_id: str) -> None:
    assert accept(id=event_id).id == event_id


@pytest.mark.parametrize("event_id", ["", "a" * 129, 5, True, ["x"]])
def test_id_rejected(event_id: Any) -> None:
    assert "$[0].id" in rejected_by_decoder({"name": "click", "id": event_id})


# --- dims -----------------------------------------------------------------------------------


def test_dims_at_most_16() -> None:
    sixteen = {f"d{i}": "v" for i in range(16)}
    assert accept(dims=sixteen).dims == sixteen
    seventeen = {f"d{i}": "v" for i in range(17)}
    assert "$[0].dims" in rejected_by_decoder({"name": "click", "dims": seventeen})


@pytest.mark.parametrize("dim", ["country", "a", "_", "a" * 32, "utm_source", "x9"])
def test_dim_name_accepted(dim: str) -> None:
    assert accept(dims={dim: "v"}).dims == {dim: "v"}


@pytest.mark.parametrize(
    "dim", ["Country", "", "a" * 33, "utm-source", "utm.source", "utm source", "ü", "a\x1f"]
)
def test_dim_name_rejected(dim: str) -> None:
    assert "$[0].dims" in rejected_by_decoder({"name": "click", "dims": {dim: "v"}})


def test_dim_name_with_trailing_newline_rejected() -> None:
    assert "$[0].dims" in rejected_by_decoder({"name": "click", "dims": {"country\n": "v"}})


@pytest.mark.parametrize(
    "value",
    [
        "v",
        "a" * 256,
        "€" * 64,  # 192 bytes
        "€" * 85,  # 255 bytes
        "😀" * 64,  # 256 bytes: exactly the limit
        "Zürich / 東京",
        " leading and trailing ",
    ],
)
def test_dim_value_accepted(value: str) -> None:
    assert accept(dims={"city": value}).dims == {"city": value}


@pytest.mark.parametrize("value", ["", "a" * 257])
def test_dim_value_length_rejected_by_decoder(value: str) -> None:
    assert "$[0].dims" in rejected_by_decoder({"name": "click", "dims": {"city": value}})


@pytest.mark.parametrize(
    "value",
    [
        "€" * 86,  # 258 bytes
        "€" * 100,  # 300 bytes
        "😀" * 65,  # 260 bytes
        "a" * 200 + "€" * 20,  # 260 bytes
    ],
)
def test_dim_value_too_many_bytes(value: str) -> None:
    assert len(value.encode()) > 256 >= len(value)
    err = rejected_by_validation({"name": "a"}, {"name": "click", "dims": {"city": value}})
    assert err.code == "dim_too_long"
    assert err.message.startswith("$[1].dims.city")


@pytest.mark.parametrize(
    "value", ["a\x00b", "a\x1fb", "\x1f", "a\x7fb", "\tx", "a\nb", "\nx", "x\r", "\x1b[31m"]
)
def test_dim_value_control_characters_rejected(value: str) -> None:
    assert "$[0].dims" in rejected_by_decoder({"name": "click", "dims": {"city": value}})


def test_dim_value_with_trailing_newline_rejected() -> None:
    assert "$[0].dims" in rejected_by_decoder({"name": "click", "dims": {"country": "US\n"}})


@pytest.mark.parametrize("dims", [{"city": 1}, {"city": None}, {"city": ["x"]}, ["city"], "city"])
def test_dims_wrong_type(dims: Any) -> None:
    assert "$[0].dims" in rejected_by_decoder({"name": "click", "dims": dims})


# --- value ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "micros"),
    [
        (2.5, 2_500_000),
        (0.1, 100_000),
        (0.3, 300_000),
        (0.7, 700_000),
        (1.1, 1_100_000),
        (-0.000001, -1),
        (0.000001, 1),
        (123456.789012, 123_456_789_012),
        (7, 7_000_000),
        (0, 0),
        (-3.25, -3_250_000),
        (1e9, 10**15),
        (-1e9, -(10**15)),
        (999_999_999.999999, 999_999_999_999_999),
        (None, 0),
    ],
)
def test_value_in_millionths(value: float | None, micros: int) -> None:
    raw = accept(value=value)
    assert raw.value == micros
    assert type(raw.value) is int
    assert to_micros(value) == micros


@pytest.mark.parametrize("value", [1e9 + 1, -1e9 - 1, 1_000_000_001, 1e12, 1e300, -1e300])
def test_value_out_of_range(value: float) -> None:
    assert "$[0].value" in rejected_by_decoder({"name": "click", "value": value})


def test_value_overflowing_float_rejected() -> None:
    with pytest.raises(msgspec.ValidationError, match=r"\$\[0\]\.value"):
        batch_decoder.decode(b'[{"name": "click", "value": 1e400}]')


@pytest.mark.parametrize("text", [b"NaN", b"Infinity", b"-Infinity"])
def test_value_non_finite_not_accepted(text: bytes) -> None:
    with pytest.raises(msgspec.DecodeError):
        batch_decoder.decode(b'[{"name": "click", "value": ' + text + b"}]")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_value_non_finite_rejected_by_model(value: float) -> None:
    with pytest.raises(msgspec.ValidationError, match=r"\$\[0\]\.value"):
        msgspec.convert([{"name": "click", "value": value}], list[EventIn])


@pytest.mark.parametrize("value", ["1", True, [1], {"v": 1}])
def test_value_wrong_type(value: Any) -> None:
    assert "$[0].value" in rejected_by_decoder({"name": "click", "value": value})


# --- uid ------------------------------------------------------------------------------------


@pytest.mark.parametrize("uid", ["u", "a" * 256, "user@example.com", "用户"])
def test_uid_accepted(uid: str) -> None:
    assert accept(uid=uid).uid == uid


@pytest.mark.parametrize("uid", ["", "a" * 257, 42, False])
def test_uid_rejected(uid: Any) -> None:
    assert "$[0].uid" in rejected_by_decoder({"name": "click", "uid": uid})


# --- shape ----------------------------------------------------------------------------------


def test_unknown_field_rejected() -> None:
    message = rejected_by_decoder({"name": "ok"}, {"name": "click", "user": "x"})
    assert "$[1]" in message
    assert "user" in message


@pytest.mark.parametrize(
    "body",
    [b'{"name": "click"}', b'"click"', b"[1]", b"[null]", b'[["click"]]', b'[{"name": 5}]'],
)
def test_wrong_shapes_rejected(body: bytes) -> None:
    with pytest.raises(msgspec.ValidationError):
        batch_decoder.decode(body)


def test_malformed_json_rejected() -> None:
    with pytest.raises(msgspec.DecodeError):
        batch_decoder.decode(b'[{"name": "click"')


def test_wire_struct_has_the_documented_fields() -> None:
    """The ingest path decodes EventWire; /openapi.json documents EventIn: same fields,
    same defaults, so the schema describes exactly what is accepted."""
    wire = msgspec.structs.fields(EventWire)
    documented = msgspec.structs.fields(EventIn)
    assert [(f.name, f.required) for f in wire] == [(f.name, f.required) for f in documented]


@pytest.mark.parametrize(
    "event",
    [
        {"name": "click", "dims": {"Bad": "v"}},
        {"name": "click", "dims": {"k": ""}},
        {"name": "click", "dims": {"k": "a\x7fb"}},
        {"name": "click", "dims": {"k": "x" * 257}},
        {"name": "click", "id": ""},
        {"name": "click", "id": "x" * 129},
        {"name": "click", "uid": "x" * 257},
        {"name": "click", "value": 1e9 + 1},
        {"name": "click", "value": -1e9 - 1},
        {"name": "a" * 65},
    ],
)
def test_wire_checks_match_the_schema(event: dict[str, Any]) -> None:
    """Whatever EventIn's schema rejects, validation rejects too (and the reverse holds for
    the accepted cases above)."""
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert(event, EventIn)
    rejected_by_decoder(event)


def test_repeated_strings_are_still_checked_per_event() -> None:
    """The memo of checked strings never lets a bad string through on a later batch."""
    accept(dims={"link": "ok"})
    accept(dims={"link": "ok"})
    assert "$[1].dims.link" in rejected_by_decoder(
        {"name": "click", "dims": {"link": "ok"}}, {"name": "click", "dims": {"link": "o\nk"}}
    )
