"""Unit tests for counters.core.config.load_settings: defaults, TOML file, env, overrides."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import pytest

from counters.core.config import Settings, load_settings


@pytest.fixture(autouse=True)
def _empty_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run in an empty directory so a stray ./counters.toml cannot change the defaults."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)


def write_toml(tmp_path: Path, text: str, name: str = "settings.toml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_defaults() -> None:
    s = load_settings({})
    assert s == Settings()
    assert s.redis_url is None
    assert s.database_url is None
    assert s.host == "127.0.0.1"
    assert s.port == 8000
    assert s.key_prefix == "ctr"
    assert s.crosstabs == ()
    assert s.grace_seconds == 30.0
    assert s.persister_enabled is True
    assert s.max_event_age_days == 30
    assert s.max_future_seconds == 300


def test_env_is_the_explicit_mapping_not_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("COUNTERS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("COUNTERS_PORT", "1234")
    assert load_settings({}).port == 8000
    assert load_settings().port == 1234


def test_port_coerced_to_int() -> None:
    s = load_settings({"COUNTERS_PORT": "9000"})
    assert s.port == 9000
    assert type(s.port) is int


@pytest.mark.parametrize(
    ("env", "field", "expected"),
    [
        ({"COUNTERS_GRACE_SECONDS": "1.5"}, "grace_seconds", 1.5),
        ({"COUNTERS_PERSISTER_ENABLED": "false"}, "persister_enabled", False),
        ({"COUNTERS_PERSISTER_ENABLED": "0"}, "persister_enabled", False),
        ({"COUNTERS_PERSISTER_ENABLED": "true"}, "persister_enabled", True),
        ({"COUNTERS_PERSISTER_PROCESS": "false"}, "persister_process", False),
        ({"COUNTERS_REDIS_URL": "redis://h:6380/0"}, "redis_url", "redis://h:6380/0"),
        ({"COUNTERS_KEY_PREFIX": "ctrx"}, "key_prefix", "ctrx"),
        ({"COUNTERS_MAX_BATCH_EVENTS": "50"}, "max_batch_events", 50),
        ({"COUNTERS_PORT": ""}, "port", 8000),  # empty means unset
        ({"PORT": "1", "counters_port": "2", "COUNTERS_port": "3"}, "port", 8000),
    ],
)
def test_env_values(env: dict[str, str], field: str, expected: object) -> None:
    value = getattr(load_settings(env), field)
    assert value == expected
    assert type(value) is type(expected)


def test_crosstabs_from_env_are_sorted_tuples() -> None:
    s = load_settings({"COUNTERS_CROSSTABS": "source:country,link:country"})
    assert s.crosstabs == (("country", "source"), ("country", "link"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (" source : country , link:country ", (("country", "source"), ("country", "link"))),
        ("c:b:a", (("a", "b", "c"),)),
        ("country", ()),  # a single dim is always a rollup, not a cross-tab
        ("country:country", ()),
        ("b:a:b", (("a", "b"),)),
        ("source:country,,", (("country", "source"),)),
    ],
)
def test_crosstabs_normalisation(text: str, expected: tuple[tuple[str, ...], ...]) -> None:
    assert load_settings({"COUNTERS_CROSSTABS": text}).crosstabs == expected


def test_toml_file_is_read(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        'port = 9100\nkey_prefix = "fromfile"\ngrace_seconds = 2.5\n'
        'crosstabs = [["source", "country"], ["link", "country"]]\n',
    )
    s = load_settings({"COUNTERS_CONFIG": path})
    assert s.port == 9100
    assert s.key_prefix == "fromfile"
    assert s.grace_seconds == 2.5
    assert s.crosstabs == (("country", "source"), ("country", "link"))
    assert s.host == "127.0.0.1"  # untouched default


def test_env_overrides_toml(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'port = 9100\nkey_prefix = "fromfile"\ncrosstabs = [["a", "b"]]\n')
    s = load_settings(
        {"COUNTERS_CONFIG": path, "COUNTERS_PORT": "9200", "COUNTERS_CROSSTABS": "c:d"}
    )
    assert s.port == 9200
    assert s.key_prefix == "fromfile"
    assert s.crosstabs == (("c", "d"),)


def test_overrides_beat_env_and_toml(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "port = 9100\n")
    s = load_settings({"COUNTERS_CONFIG": path, "COUNTERS_PORT": "9200"}, {"port": 9300})
    assert s.port == 9300


def test_counters_toml_in_working_directory_is_the_default_file() -> None:
    Path("counters.toml").write_text("port = 9400\n", encoding="utf-8")
    assert load_settings({}).port == 9400


def test_missing_config_file_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_settings({"COUNTERS_CONFIG": str(tmp_path / "nope.toml")})


def test_bad_env_value_names_the_setting() -> None:
    with pytest.raises(ValueError, match="port") as info:
        load_settings({"COUNTERS_PORT": "abc"})
    assert "bad setting" in str(info.value)


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({"COUNTERS_GRACE_SECONDS": "soon"}, "grace_seconds"),
        ({"COUNTERS_PERSISTER_ENABLED": "maybe"}, "persister_enabled"),
        ({"COUNTERS_MAX_EVENT_AGE_DAYS": "1.5"}, "max_event_age_days"),
    ],
)
def test_other_bad_env_values(env: dict[str, str], setting: str) -> None:
    with pytest.raises(ValueError, match=setting):
        load_settings(env)


def test_bad_toml_value_names_the_setting(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'port = "high"\n')
    with pytest.raises(ValueError, match="port"):
        load_settings({"COUNTERS_CONFIG": path})


def test_unknown_toml_key_rejected(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "prot = 9000\n")
    with pytest.raises(ValueError, match="prot"):
        load_settings({"COUNTERS_CONFIG": path})


def test_settings_is_frozen() -> None:
    s = load_settings({})
    with pytest.raises(AttributeError):
        s.port = 1  # type: ignore[misc]
    assert s.port == 8000
    changed = msgspec.structs.replace(s, port=1)
    assert changed.port == 1 and s.port == 8000


def test_settings_is_hashable_and_comparable() -> None:
    a = load_settings({"COUNTERS_CROSSTABS": "a:b"})
    b = load_settings({"COUNTERS_CROSSTABS": "b:a"})
    assert a == b
    assert hash(a) == hash(b)


def test_resolved_data_dir_is_absolute(tmp_path: Path) -> None:
    s = load_settings({"COUNTERS_DATA_DIR": "rel/dir"})
    resolved = s.resolved_data_dir()
    assert resolved.is_absolute()
    assert resolved == (Path.cwd() / "rel" / "dir").resolve()
