"""lua.keys: every key in the project's Redis Cluster hash tag, parse_key the inverse of
ProjectKeys, the hash-field grammar both ways; and every key the scripts create on a real
Redis is one parse_key names."""

from __future__ import annotations

import itertools
from typing import Any, get_args

import msgspec
import pytest

from counters.core.buckets import DAY_MS, GRAINS, HOUR_MS, MINUTE_MS, Grain, bucket_start
from counters.core.models import EventIn
from counters.core.rollups import encode_field
from counters.engines.ingest import Idempotency
from lua import NAMES, read_script
from lua.client import RedisClient
from lua.keys import (
    COUNT,
    SUM,
    US,
    KeyKind,
    KeyName,
    ProjectKeys,
    count_field,
    event_id_token,
    idempotency_token,
    late_field,
    late_hll_member,
    parse_key,
    parse_late_field,
    parse_late_hll_member,
    parse_measure_field,
    sum_field,
)
from tests.support import T0, Harness

FIELD = encode_field("click", ("country", "source"), ("DE", "web"))
BUCKET = 1_795_428_000_000


def hash_tag(key: str) -> str:
    """The part of a key Redis Cluster hashes (CLUSTER KEYSLOT rules): the text between the
    first '{' and the first '}' after it, if that is non-empty; otherwise the whole key."""
    start = key.find("{")
    if start == -1:
        return key
    end = key.find("}", start + 1)
    if end == -1 or end == start + 1:
        return key
    return key[start + 1 : end]


def all_keys(keys: ProjectKeys) -> dict[str, str]:
    """One name from every key method, labelled by method."""
    out = {"watermarks": keys.watermarks, "raw": keys.raw, "history_version": keys.history_version}
    for grain in GRAINS:
        g = grain.name
        out[f"hot:{g}"] = keys.hot(grain, BUCKET)
        out[f"hll:{g}"] = keys.hll(grain, BUCKET, FIELD)
        out[f"dirty:{g}"] = keys.dirty(grain)
        out[f"late_hll:{g}"] = keys.late_hll(7, grain, BUCKET, FIELD)
    out["event_id"] = keys.event_id("click", "evt-00001")
    out["event_id_braces"] = keys.event_id("click", "a{b}c")
    out["idempotency"] = keys.idempotency(idempotency_token("batch-1"))
    out["event_names"] = keys.event_names(bucket_start(BUCKET, Grain.day))
    out["dim_names"] = keys.dim_names(-DAY_MS)
    out["late"] = keys.late(7)
    out["late_hll_index"] = keys.late_hll_index(7)
    out["tmp"] = keys.tmp("0123abcd")
    out["restore_index"] = keys.restore_index("0123abcd")
    for grain in GRAINS:
        out[f"restore_hot:{grain.name}"] = keys.restore_hot("0123abcd", grain, BUCKET)
        out[f"restore_hll:{grain.name}"] = keys.restore_hll("0123abcd", grain, BUCKET, FIELD)
    out["dim_values"] = keys.dim_values("country", bucket_start(BUCKET, Grain.day))
    out["dim_values_negative_day"] = keys.dim_values("a_b", -DAY_MS)
    out["rate_key"] = keys.rate_key("0123456789abcdef")
    out["rate_events"] = keys.rate_events
    return out


PREFIXES = ["ctr", "cttest1234", "app.prod", "a:b", "x"]
PROJECTS = ["acme", "a", "shop-1", "p_2", "acme2", "0"]


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("project", PROJECTS)
def test_every_key_is_in_the_project_hash_tag(prefix: str, project: str) -> None:
    keys = ProjectKeys(prefix, project)
    assert keys.project == project
    assert keys.base == f"{prefix}:{{p:{project}}}:"
    for method, name in all_keys(keys).items():
        assert name.startswith(f"{prefix}:{{p:{project}}}:"), method
        assert hash_tag(name) == f"p:{project}", method


def test_key_layout() -> None:
    k = ProjectKeys("ctr", "acme")
    assert k.watermarks == "ctr:{p:acme}:wm"
    assert k.raw == "ctr:{p:acme}:raw"
    assert k.hot(Grain.minute, 60_000) == "ctr:{p:acme}:h:m:60000"
    assert k.hot(Grain.hour, BUCKET) == f"ctr:{{p:acme}}:h:h:{BUCKET}"
    assert k.hot(Grain.day, -86_400_000) == "ctr:{p:acme}:h:d:-86400000"
    assert k.hll(Grain.day, BUCKET, FIELD) == f"ctr:{{p:acme}}:u:d:{BUCKET}:{FIELD}"
    assert k.dirty(Grain.hour) == "ctr:{p:acme}:dirty:h"
    assert k.event_id("click", "e1") == "ctr:{p:acme}:id:" + event_id_token("click", "e1")
    assert k.idempotency("ab" * 16) == "ctr:{p:acme}:idem:" + "ab" * 16
    assert k.event_names(DAY_MS) == f"ctr:{{p:acme}}:names:{DAY_MS}"
    assert k.dim_names(DAY_MS) == f"ctr:{{p:acme}}:dimnames:{DAY_MS}"
    assert k.late(3) == "ctr:{p:acme}:late:3"
    assert k.late_hll(3, Grain.minute, 60_000, FIELD) == f"ctr:{{p:acme}}:late:3:u:m:60000:{FIELD}"
    assert k.late_hll_index(3) == "ctr:{p:acme}:late:3:hll"
    assert k.tmp("tok") == "ctr:{p:acme}:tmp:tok"


def test_key_methods_never_collide_within_a_project() -> None:
    k = ProjectKeys("ctr", "acme")
    names = list(all_keys(k).values())
    # vary every argument too: different buckets, grains, fields and generations differ
    names += [k.hot(Grain.minute, BUCKET + 60_000), k.hll(Grain.minute, BUCKET, FIELD + "x")]
    names += [k.late(8), k.late_hll_index(8), k.late_hll(8, Grain.minute, BUCKET, FIELD)]
    names += [k.event_id("click", "wm"), k.event_id("view", "wm"), k.event_id("click", "raw")]
    names += [k.tmp("wm")]
    assert len(names) == len(set(names))


def test_different_projects_and_prefixes_never_collide() -> None:
    seen: dict[str, tuple[str, str]] = {}
    for prefix, project in itertools.product(PREFIXES, PROJECTS):
        for name in all_keys(ProjectKeys(prefix, project)).values():
            owner = seen.setdefault(name, (prefix, project))
            assert owner == (prefix, project), f"{name!r} used by {owner} and {(prefix, project)}"
    assert len(seen) == len(PREFIXES) * len(PROJECTS) * len(all_keys(ProjectKeys("x", "y")))


def test_projects_whose_names_are_prefixes_of_each_other_get_different_slots() -> None:
    a, b = ProjectKeys("ctr", "acme"), ProjectKeys("ctr", "acme2")
    assert hash_tag(a.raw) != hash_tag(b.raw)
    assert not b.watermarks.startswith(a.base)
    assert not a.watermarks.startswith(b.base)


def test_hash_tag_helper_follows_redis_rules() -> None:
    assert hash_tag("{user1000}.following") == "user1000"
    assert hash_tag("foo{}{bar}") == "foo{}{bar}"
    assert hash_tag("foo{{bar}}zap") == "{bar"
    assert hash_tag("foo{bar}{zap}") == "bar"
    assert hash_tag("nobraces") == "nobraces"


def test_count_sum_and_late_fields() -> None:
    assert US == "\x1f"
    assert count_field(FIELD) == "c\x1f" + FIELD
    assert sum_field(FIELD) == "s\x1f" + FIELD
    assert count_field("click\x1f") == "c\x1fclick\x1f"
    assert count_field(FIELD) != sum_field(FIELD)
    assert late_field(Grain.minute, 60_000, count_field(FIELD)) == "m:60000:c\x1f" + FIELD
    assert late_field(Grain.hour, BUCKET, sum_field(FIELD)) == f"h:{BUCKET}:s\x1f{FIELD}"
    assert late_field(Grain.day, -86_400_000, "c\x1fx\x1f") == "d:-86400000:c\x1fx\x1f"


def test_late_fields_distinguish_grain_bucket_and_measure() -> None:
    fields = {
        late_field(grain, bucket, measure(FIELD))
        for grain in GRAINS
        for bucket in (0, 60_000, BUCKET)
        for measure in (count_field, sum_field)
    }
    assert len(fields) == len(GRAINS) * 3 * 2


# --- parse_key: the inverse of ProjectKeys ----------------------------------------------------

KINDS: tuple[str, ...] = get_args(KeyKind)


def kind_of(label: str) -> str:
    """The KeyKind an all_keys label names (the longest kind it starts with)."""
    return max((k for k in KINDS if label.startswith(k)), key=len)


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("project", PROJECTS)
def test_parse_key_names_every_key_and_round_trips(prefix: str, project: str) -> None:
    keys = ProjectKeys(prefix, project)
    odd_ids = ["wm", "raw", "a:b:c", "x}:y", "{p:z}:wm", "id:1", "日本"]
    names = list(all_keys(keys).items())
    names += [(f"event_id:{i}", keys.event_id("click", i)) for i in odd_ids]
    names += [("tmp:x", keys.tmp("rb:abc:12")), ("hll:colon", keys.hll(Grain.hour, 0, "c\x1fa:b"))]
    for label, name in names:
        parsed = parse_key(name)
        assert parsed.kind == kind_of(label), label
        assert (parsed.prefix, parsed.project) == (prefix, project), label
        assert parsed.key() == name, label
        assert parse_key(name.encode()) == parsed


def test_parse_key_parts() -> None:
    k = ProjectKeys("ctr", "acme")
    assert parse_key(k.hot(Grain.day, -DAY_MS)) == KeyName("hot", "ctr", "acme", Grain.day, -DAY_MS)
    assert parse_key(k.hll(Grain.minute, 60_000, FIELD)) == KeyName(
        "hll", "ctr", "acme", Grain.minute, 60_000, FIELD
    )
    assert parse_key(k.late_hll(3, Grain.hour, BUCKET, FIELD)) == KeyName(
        "late_hll", "ctr", "acme", Grain.hour, BUCKET, FIELD, 3
    )
    assert parse_key(k.late(12)).gen == 12
    assert parse_key(k.late_hll_index(12)) == KeyName("late_hll_index", "ctr", "acme", gen=12)
    assert parse_key(k.dirty(Grain.hour)).grain is Grain.hour
    assert parse_key(k.event_id("click", "a:b")).name == event_id_token("click", "a:b")
    assert "a:b" not in k.event_id("click", "a:b")
    assert parse_key(k.idempotency("0f" * 16)) == KeyName(
        "idempotency", "ctr", "acme", name="0f" * 16
    )
    assert parse_key(k.event_names(DAY_MS)) == KeyName("event_names", "ctr", "acme", bucket=DAY_MS)
    assert parse_key(k.dim_names(0)) == KeyName("dim_names", "ctr", "acme", bucket=0)
    card = parse_key(k.dim_values("country", DAY_MS))
    assert (card.kind, card.name, card.bucket) == ("dim_values", "country", DAY_MS)
    assert {kind_of(label) for label in all_keys(k)} == set(KINDS)


@pytest.mark.parametrize(
    "key",
    [
        "ctr:acme:wm",  # no hash tag
        "ctr:{p:acme}:",
        "ctr:{p:acme}:nope",
        "ctr:{p:acme}:wm:1",
        "ctr:{p:acme}:h:x:60000",
        "ctr:{p:acme}:h:m:060000",
        "ctr:{p:acme}:h:m:+60000",
        "ctr:{p:acme}:h:m:60000:extra",
        "ctr:{p:acme}:h:m",
        "ctr:{p:acme}:dirty:q",
        "ctr:{p:acme}:late:x",
        "ctr:{p:acme}:late:1:zz",
        "ctr:{p:acme}:card:country",
        "ctr:{p:acme}:card::5",
        "ctr:{p:acme}:id:order-1001",  # event ids are hashed, never in a key name
        "ctr:{p:acme}:idem:my-key",
        "ctr:{p:acme}:names:x",
        "ctr:{p:acme}:dimnames:",
        "ctr:{p:acme}:rl",
        "ctr:{p:acme}:rl:key:",
        "ctr:{p:acme}:rl:key:a:b",
        "ctr:{p:acme}:rl:nope",
    ],
)
def test_parse_key_refuses_what_counters_does_not_name(key: str) -> None:
    with pytest.raises(ValueError):
        parse_key(key)


def test_field_grammar_both_ways() -> None:
    for measure, encode in ((COUNT, count_field), (SUM, sum_field)):
        assert parse_measure_field(encode(FIELD)) == (measure, FIELD)
        assert parse_measure_field(encode(FIELD).encode()) == (measure, FIELD)
    for grain in GRAINS:
        for bucket in (0, -DAY_MS, BUCKET):
            assert parse_late_field(late_field(grain, bucket, sum_field(FIELD))) == (
                grain,
                bucket,
                sum_field(FIELD),
            )
            assert parse_late_hll_member(late_hll_member(grain, bucket, FIELD)) == (
                grain,
                bucket,
                FIELD,
            )


# --- every script, every key in the slot ------------------------------------------------------


def test_every_script_header_lists_keys_argv_and_returns() -> None:
    for name in NAMES:
        text = read_script(name)
        header = text[: text.index("\n\n")]
        assert f"-- {name}.lua:" in header, name
        assert "KEYS[1]" in header, name
        assert "ARGV" in header, name
        assert "Returns" in header, name
        assert "\n" not in text[: text.index("--")], "the prelude keeps line numbers"


async def _slot_keys(redis: RedisClient, keys: ProjectKeys) -> set[str]:
    return {k.decode() async for k in redis.scan_iter(match=keys.base + "*", count=1000)}


async def test_every_key_the_scripts_create_is_named_by_parse_key(harness: Harness) -> None:
    """Drives every script (ingest with dedupe ids, uniques, cross-tabs and the dim cap;
    read_hot; seal; the persister's rotate_late, trim_raw and cut; restore after the
    watermarks are lost; late events) and checks each key in the project's slot."""
    h = Harness.build(
        harness.settings,
        harness.redis,
        harness.pool,
        harness.scripts,
        harness.project,
        crosstabs=(("country", "source"),),
        dim_cardinality_cap=2,
    )
    redis, keys, scripts = h.redis, h.keys, h.scripts
    hour, day = bucket_start(T0, Grain.hour), bucket_start(T0, Grain.day)
    seen: set[str] = set()

    def ev(**kw: Any) -> dict[str, Any]:
        return {"name": "click", "ts": T0, **kw}

    await h.ingest(
        ev(id="e1", uid="u1", value=1.5, dims={"country": "DE", "source": "a:b"}),
        ev(id="e2", uid="u2", dims={"country": "FR", "source": "web", "device": "ios"}),
        ev(id="e3", ts=T0 + MINUTE_MS, dims={"device": "and"}),
        ev(id="e4", ts=T0 + MINUTE_MS, dims={"device": "win"}),  # over the cap: __other__
    )
    assert (await h.ingest(ev(id="e1"))).duplicates == 1
    raw = h.services.validate([msgspec.convert(ev(), EventIn)], now_ms=h.clock.now_ms())
    token = Idempotency(idempotency_token("batch-1"), "00" * 16)
    assert (await h.ingestor.apply(h.project, raw, idempotency=token)).accepted == 1
    assert await h.total("click", hour, hour + HOUR_MS, "uniques") == 2  # read_hot.lua
    seen |= await _slot_keys(redis, keys)

    # seal the first minute only: hour and day hashes and sketches appear
    await scripts.seal(
        keys=[keys.watermarks, keys.dirty(Grain.minute)],
        args=[T0 + MINUTE_MS, hour, day, keys.base, 20_000],
    )
    await h.ingest(ev(uid="u3", dims={"country": "DE"}))  # a sealed minute, hot hour
    seen |= await _slot_keys(redis, keys)

    h.clock.advance(2 * HOUR_MS)
    await h.persist()  # seal, copy, rotate_late, trim_raw
    await h.ingest(ev(id="late1", uid="u4", value=2, dims={"country": "DE", "source": "web"}))
    seen |= await _slot_keys(redis, keys)  # late generation: hash, sketches, index

    await redis.delete(keys.watermarks)  # Redis lost its state: restore.lua puts it back
    await h.ingest(ev(id="late2", uid="u5"))
    seen |= await _slot_keys(redis, keys)
    reply = await scripts.cut(keys=[keys.watermarks, keys.raw])
    assert reply[0] != b"NOWM"
    await h.persist()
    await h.persist()
    seen |= await _slot_keys(redis, keys)
    await h.services.limiter.charge(h.project, "0123456789abcdef", "ingest")  # ratelimit.lua
    await h.services.limiter.charge_events(h.project, 10)
    seen |= await _slot_keys(redis, keys)

    kinds = set()
    for name in seen:
        parsed = parse_key(name)
        assert (parsed.prefix, parsed.project) == (h.settings.key_prefix, h.project), name
        assert parsed.key() == name
        kinds.add(parsed.kind)
    transient = {"tmp", "restore_index", "restore_hot", "restore_hll"}  # deleted after use
    assert kinds >= set(KINDS) - transient, set(KINDS) - kinds
    # and nothing of the project lives outside its slot
    stray = {
        k.decode()
        async for k in redis.scan_iter(match=f"*{h.project}*", count=1000)
        if not k.decode().startswith(keys.base)
    }
    assert not stray
