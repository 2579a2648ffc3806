"""core.config.load: a good config loads; every bad one gets an error naming file, key path and problem."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.sandbox import default_config
from core import config as config_mod
from core.errors import ConfigError
from tests.conftest import business, config_dict, write_config

SECRET = "s3cret-Token-do-not-leak-9f8e7d"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (*config_mod.ENV_OVERRIDES, "TEXTBACK_CONFIG", "TWILIO_TOKEN"):
        monkeypatch.delenv(var, raising=False)


def base() -> dict[str, Any]:
    data = config_dict("sqlite:///textback.db")
    data["twilio"]["auth_token"] = SECRET
    return data


def load(tmp_path: Path, data: dict[str, Any]) -> config_mod.Config:
    return config_mod.load(str(write_config(tmp_path / "textback.yaml", data)))


def error(tmp_path: Path, data: dict[str, Any]) -> ConfigError:
    path = write_config(tmp_path / "textback.yaml", data)
    with pytest.raises(ConfigError) as info:
        config_mod.load(str(path))
    text = str(info.value)
    assert text.startswith(f"{path}: "), text  # names the file first
    assert SECRET not in text
    assert "\n" not in text
    return info.value


def test_the_sandbox_config_loads(tmp_path: Path) -> None:
    path = write_config(tmp_path / "textback.yaml", default_config(tmp_path))
    cfg = config_mod.load(str(path))
    assert cfg.source == str(path)
    assert cfg.warnings == ()
    [biz] = cfg.businesses
    assert biz.id == "bright-spark" and biz.numbers == ("+13125550100",)
    assert cfg.business_for_number("(312) 555-0100") is biz
    assert cfg.worker.lease_seconds > cfg.twilio.timeout_seconds
    assert cfg.database_url.startswith("sqlite:///")


def test_the_test_config_loads_with_defaults(tmp_path: Path) -> None:
    data = base()
    del data["database_url"]
    cfg = load(tmp_path, data)
    assert cfg.database_url == "sqlite:///textback.db"
    assert cfg.twilio.auth_token == SECRET
    window = cfg.businesses[0].policy.window
    assert (window.start.isoformat(), window.end.isoformat()) == ("00:00:00", "00:00:00")  # all day
    biz = business()
    del biz["policy"]
    data["businesses"] = [biz]
    window = load(tmp_path, data).businesses[0].policy.window
    assert (window.start.isoformat(), window.end.isoformat()) == ("08:00:00", "21:00:00")


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        node: Any = data
        keys = path.split(".")
        for key in keys[:-1]:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if value is _DELETE:
            del node[keys[-1]]
        else:
            node[keys[-1]] = value

    return change


_DELETE = object()
_FIRST = "{hi}, it's {business}. Reply STOP to opt out."


def _second_business(**overrides: Any) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        data["businesses"].append(business(**overrides))

    return change


def _no_booking_link(data: dict[str, Any]) -> None:
    del data["businesses"][0]["booking_link"]
    data["businesses"][0]["templates"] = {"after_hours": _FIRST + " Book online: {booking_link}"}


@pytest.mark.parametrize(
    ("change", "key_path", "words"),
    [
        (_set("businesses.0.colour", "red"), "businesses.0.colour", ["unknown key", "colour"]),
        (_set("colour", "red"), "colour", ["unknown key"]),
        (_set("twilio.auth_tokn", "x"), "twilio.auth_tokn", ["unknown key"]),
        (_set("businesses.0.numbers", ["312-555-0100"]), "businesses.0.numbers.0", ["312-555-0100", "E.164"]),
        (_set("businesses.0.staff_phones", ["+1312555011"]), "businesses.0.staff_phones.0", ["+1312555011"]),
        (_set("businesses.0.timezone", "Mars/Olympus_Mons"), "businesses.0.timezone", ["Mars/Olympus_Mons"]),
        (_set("twilio.auth_token", "${TWILIO_TOKEN}"), "twilio.auth_token", ["TWILIO_TOKEN", "not set"]),
        (
            _set("businesses.0.templates", {"business_hours": _FIRST + " {frist_name}"}),
            "businesses.0.templates.business_hours",
            ["frist_name", "merge field"],
        ),
        (
            _set("businesses.0.templates", {"after_hours": "{hi}, it's {business}. Call us back!"}),
            "businesses.0.templates.after_hours",
            ["STOP"],
        ),
        (
            _set("businesses.0.templates", {"existing_customer": "Hi! Sorry we missed you. Reply STOP."}),
            "businesses.0.templates.existing_customer",
            ["{business}"],
        ),
        (_set("businesses.0.templates", {"business_hours": "Hi {business"}), "businesses.0.templates", []),
        (_no_booking_link, "businesses.0.templates.after_hours", ["booking_link"]),
        (_second_business(numbers=["+13125550199"]), "businesses.1.id", ["duplicate", "bright-spark"]),
        (_second_business(id="other-shop"), "businesses.1.numbers", ["+13125550100", "bright-spark"]),
        (_set("businesses.0.staff_phones", []), "businesses.0.staff_phones", ["ring_through", "staff"]),
        (_set("worker.lease_seconds", 2), "worker.lease_seconds", ["twilio.timeout_seconds"]),
        (_set("worker.lease_seconds", 1.5), "worker.lease_seconds", ["twilio.timeout_seconds"]),
        (_set("twilio.auth_token", 12345), "twilio.auth_token", ["secret"]),
        (_set("businesses.0.policy.blocklist", ["not a number"]), "businesses.0.policy.blocklist.0", []),
        (_set("businesses", []), "businesses", []),
        (_set("businesses.0.name", _DELETE), "businesses.0", ["name"]),
    ],
)
def test_config_errors_name_file_key_path_and_problem(
    tmp_path: Path, change: Callable[[dict[str, Any]], None], key_path: str, words: list[str]
) -> None:
    data = base()
    change(data)
    err = error(tmp_path, data)
    assert err.path is not None and err.path.startswith(key_path), str(err)
    assert f": {err.path}: " in str(err)
    for word in words:
        assert word in str(err)


def test_lease_equal_to_the_timeout_is_refused(tmp_path: Path) -> None:
    data = base()
    data["twilio"]["timeout_seconds"] = 4
    data["worker"]["lease_seconds"] = 4
    assert error(tmp_path, data).path == "worker.lease_seconds"
    data["worker"]["lease_seconds"] = 4.5
    assert load(tmp_path, data).worker.lease_seconds == 4.5


@pytest.mark.parametrize(
    ("text", "line", "column"),
    [
        ("businesses:\n  - id: a\n   name: b\n", 3, 4),
        ("twilio: {auth_token: abc\n", 2, 1),
        ("database_url: sqlite:///x.db\n\tbusinesses: []\n", 2, 1),
    ],
)
def test_invalid_yaml_names_line_and_column(tmp_path: Path, text: str, line: int, column: int) -> None:
    path = tmp_path / "textback.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        config_mod.load(str(path))
    assert str(info.value).startswith(f"{path}: line {line}, column {column}: ")
    assert "YAML" in str(info.value)


def test_a_non_mapping_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "textback.yaml"
    path.write_text("- just\n- a list\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="mapping"):
        config_mod.load(str(path))


def test_env_references_are_resolved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = base()
    data["twilio"]["auth_token"] = "${TWILIO_TOKEN}"
    data["twilio"]["account_sid"] = "${TWILIO_SID}"
    monkeypatch.setenv("TWILIO_TOKEN", "from-the-environment")
    monkeypatch.setenv("TWILIO_SID", "AC" + "12" * 16)
    cfg = load(tmp_path, data)
    assert cfg.twilio.auth_token == "from-the-environment"
    assert cfg.twilio.account_sid == "AC" + "12" * 16


def test_textback_env_vars_override_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEXTBACK_TWILIO_AUTH_TOKEN", "override-token")
    monkeypatch.setenv("TEXTBACK_DATABASE_URL", "sqlite:///override.db")
    cfg = load(tmp_path, base())
    assert cfg.twilio.auth_token == "override-token"
    assert cfg.database_url == "sqlite:///override.db"
    # An override also stands in for an unset ${VAR} reference to the same setting.
    data = base()
    data["twilio"]["auth_token"] = "${TWILIO_TOKEN}"
    assert load(tmp_path, data).twilio.auth_token == "override-token"


def test_a_long_template_gives_a_warning(tmp_path: Path) -> None:
    data = base()
    long = "{hi}, it's {business}. " + "We are very sorry we could not pick up your call today. " * 6
    data["businesses"][0]["templates"] = {"business_hours": long + "Reply STOP to opt out."}
    cfg = load(tmp_path, data)
    [warning] = cfg.warnings
    assert "businesses.0.templates.business_hours" in warning
    assert "3 SMS segments" in warning and "GSM-7" in warning
    # Two segments are fine.
    data["businesses"][0]["templates"] = {"business_hours": _FIRST + " We'll text right back."}
    assert load(tmp_path, data).warnings == ()


def test_a_long_unicode_template_counts_ucs2_segments(tmp_path: Path) -> None:
    data = base()
    text = "{hi} 👋, it's {business}. " + "ç" * 100 + " Reply STOP"
    data["businesses"][0]["templates"] = {"after_hours": text}
    [warning] = load(tmp_path, data).warnings
    assert "UCS-2" in warning


def test_no_config_file_says_where_it_looked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        config_mod.load(None)
    text = str(info.value)
    for hint in ("--config", "TEXTBACK_CONFIG", "./textback.yaml"):
        assert hint in text
    # $TEXTBACK_CONFIG is used when no --config is given, and ./textback.yaml after that.
    elsewhere = write_config(tmp_path / "elsewhere.yaml", base())
    monkeypatch.setenv("TEXTBACK_CONFIG", str(elsewhere))
    assert config_mod.load(None).source == str(elsewhere)
    monkeypatch.delenv("TEXTBACK_CONFIG")
    write_config(tmp_path / "textback.yaml", base())
    assert config_mod.load(None).source == "textback.yaml"
    with pytest.raises(ConfigError, match="not found"):
        config_mod.load(str(tmp_path / "missing.yaml"))


def test_the_auth_token_never_shows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = base()
    data["twilio"]["secondary_auth_token"] = SECRET + "-2"
    cfg = load(tmp_path, data)
    for text in (repr(cfg), str(cfg), repr(cfg.twilio), str(config_mod.masked(cfg))):
        assert SECRET not in text
    # Nor in an error about the token, whichever way it is given.
    for value in (SECRET, 12345):
        bad = copy.deepcopy(data)
        bad["twilio"]["auth_token"] = value
        bad["worker"]["lease_seconds"] = 1.5
        assert SECRET not in str(error(tmp_path, bad))
    monkeypatch.setenv("TEXTBACK_TWILIO_AUTH_TOKEN", SECRET)
    bad = copy.deepcopy(data)
    bad["twilio"]["colour"] = SECRET
    assert SECRET not in str(error(tmp_path, bad))
    (tmp_path / "textback.yaml").write_text(
        yaml.safe_dump(data).replace("twilio:", "twilio: [", 1), encoding="utf-8"
    )
    with pytest.raises(ConfigError) as info:
        config_mod.load(str(tmp_path / "textback.yaml"))
    assert SECRET not in str(info.value)
