"""Unit tests for lua.keys: every key in the project's Redis Cluster hash tag."""

from __future__ import annotations

import itertools

import pytest

from counters.core.buckets import GRAINS, Grain
from counters.core.rollups import encode_field
from lua.keys import US, ProjectKeys, count_field, late_field, sum_field

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
    out = {"watermarks": keys.watermarks, "raw": keys.raw}
    for grain in GRAINS:
        g = grain.name
        out[f"hot:{g}"] = keys.hot(grain, BUCKET)
        out[f"hll:{g}"] = keys.hll(grain, BUCKET, FIELD)
        out[f"dirty:{g}"] = keys.dirty(grain)
        out[f"late_hll:{g}"] = keys.late_hll(7, grain, BUCKET, FIELD)
    out["event_id"] = keys.event_id("evt-00001")
    out["event_id_braces"] = keys.event_id("a{b}c")
    out["late"] = keys.late(7)
    out["late_hll_index"] = keys.late_hll_index(7)
    out["tmp"] = keys.tmp("0123abcd")
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
    assert k.event_id("e1") == "ctr:{p:acme}:id:e1"
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
    names += [k.event_id("wm"), k.event_id("raw"), k.tmp("wm")]
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
