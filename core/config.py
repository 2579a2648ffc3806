"""Load, validate and normalise ``textback.yaml``.

Every problem is reported as a :class:`ConfigError` naming the file, the key path and what is
wrong. ``${VAR}`` values are read from the environment, and the ``TEXTBACK_*`` variables in
:data:`ENV_OVERRIDES` override the file.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jsonschema
import yaml

from core import business_settings as bs
from core import templates as tpl
from core.business_settings import BookingSettings, ConversationSettings, EscalationSettings, SmtpSettings
from core.config_schema import CONFIG_SCHEMA
from core.errors import ConfigError
from core.hours import DAYS, Window, parse_range
from core.phones import to_e164

ENV_OVERRIDES: dict[str, tuple[str, ...]] = {
    "TEXTBACK_DATABASE_URL": ("database_url",),
    "TEXTBACK_PUBLIC_URL": ("public_url",),
    "TEXTBACK_TWILIO_ACCOUNT_SID": ("twilio", "account_sid"),
    "TEXTBACK_TWILIO_AUTH_TOKEN": ("twilio", "auth_token"),
    "TEXTBACK_TWILIO_SECONDARY_AUTH_TOKEN": ("twilio", "secondary_auth_token"),
    "TEXTBACK_CONSOLE_PASSWORD_HASH": ("console", "password_hash"),
    "TEXTBACK_CONSOLE_SECRET_KEY": ("console", "secret_key"),
}

_ENV_REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")

DEFAULT_HOURS = {d: ["08:00-17:00"] for d in DAYS[:5]}


@dataclass(frozen=True)
class Policy:
    min_ring_seconds: float = 4.0
    cooldown_hours: float = 12.0
    send_delay_seconds: float = 0.0
    window: Window = field(default_factory=lambda: parse_range("08:00-21:00"))
    blocklist: frozenset[str] = frozenset()
    lookup_line_type: bool = False
    voicemail: bool = True
    follow_up_after_hours: float = 0.0  # 0: no follow-up when the caller never answers
    crm_lookup_budget_ms: int = 800  # the first text never waits longer for the CRM; 0: no lookup


@dataclass(frozen=True)
class Business:
    id: str
    name: str
    tz_name: str
    numbers: tuple[str, ...]
    staff_phones: tuple[str, ...]
    mode: str
    ring_timeout: int
    hours: dict[int, list[Window]]
    holidays: frozenset[date]
    booking_link: str | None
    templates: dict[str, str]
    policy: Policy
    conversation: ConversationSettings = field(default_factory=ConversationSettings)
    booking: BookingSettings = field(default_factory=BookingSettings)
    escalation: EscalationSettings = field(default_factory=EscalationSettings)

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.tz_name)


@dataclass(frozen=True)
class TwilioSettings:
    account_sid: str | None
    auth_token: str | None
    secondary_auth_token: str | None
    api_base_url: str | None
    timeout_seconds: float
    lookup_cache_days: int

    def __repr__(self) -> str:  # secrets never reach a log line or traceback
        return (
            f"TwilioSettings(account_sid={self.account_sid!r}, auth_token=***, "
            f"api_base_url={self.api_base_url!r})"
        )


@dataclass(frozen=True)
class WorkerSettings:
    poll_interval: float = 0.2
    lease_seconds: float = 60.0
    max_attempts: int = 16  # a cap: a job keeps its own smaller budget (sms.send: 8; crm.sync: 16)
    batch_size: int = 10
    threads: int = 2  # general threads: any job, batch_size at a time
    # Threads that take only texts and conversation replies, one at a time. Mostly waiting (the CRM
    # caller lookup, Twilio), so 8 per process carry ~60 texts/s with a 100 ms lookup each.
    text_threads: int = 8
    # Texts a text thread claims at once: more means one CRM search for several in a backlog, but
    # also more claimed-and-unstarted texts stranded (an attempt spent each) when a worker dies.
    text_batch_size: int = 1
    probe_interval: float = 0.01  # SQLite: how often to look for new jobs (PostgreSQL: NOTIFY)
    backoff_initial: float = 2.0
    backoff_max: float = 600.0


@dataclass(frozen=True)
class ConsoleSettings:
    """The admin console (bridge/console): disabled unless a password hash is configured."""

    password_hash: str | None = None
    secret_key: str | None = None
    allow_remote: bool = False
    session_minutes: int = 60

    @property
    def enabled(self) -> bool:
        return bool(self.password_hash)

    def __repr__(self) -> str:  # the hash and the session key never reach a log line
        return f"ConsoleSettings(enabled={self.enabled}, allow_remote={self.allow_remote})"


@dataclass(frozen=True)
class Config:
    source: str
    database_url: str
    public_url: str | None
    twilio: TwilioSettings
    worker: WorkerSettings
    log_level: str
    businesses: tuple[Business, ...]
    secret_key_file: str | None
    smtp: SmtpSettings | None
    raw: dict[str, Any] = field(repr=False)  # holds the secrets as written: never in a repr
    warnings: tuple[str, ...] = ()
    console: ConsoleSettings = field(default_factory=ConsoleSettings)

    def business(self, business_id: str) -> Business | None:
        return next((b for b in self.businesses if b.id == business_id), None)

    def business_for_number(self, number: str | None) -> Business | None:
        e164 = to_e164(number) if number else None
        if e164 is None:
            return None
        return next((b for b in self.businesses if e164 in b.numbers), None)


def resolve_path(explicit: str | None) -> Path:
    """``--config`` first, then ``$TEXTBACK_CONFIG``, then ``./textback.yaml``."""
    candidate = explicit or os.environ.get("TEXTBACK_CONFIG") or "textback.yaml"
    path = Path(candidate)
    if not path.is_file():
        hint = "pass --config FILE, set TEXTBACK_CONFIG, or create ./textback.yaml"
        hint += " (`textback sandbox --dir DIR` writes a complete one)"
        raise ConfigError(f"config file not found ({hint})", source=str(path))
    return path


def load(explicit: str | None = None) -> Config:
    path = resolve_path(explicit)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(
            f"{where}not valid YAML ({getattr(exc, 'problem', exc)})", source=str(path)
        ) from None
    return from_dict(data, source=str(path))


def from_dict(data: Any, source: str = "<config>") -> Config:
    if not isinstance(data, dict):
        raise ConfigError("the file must hold a mapping of settings at the top level", source=source)
    data = _resolve_env(data, source, ())
    for var, keys in ENV_OVERRIDES.items():
        if os.environ.get(var):
            _set_in(data, keys, os.environ[var])
    _validate_schema(data, source)
    return _build(data, source)


def _resolve_env(value: Any, source: str, path: tuple[str, ...]) -> Any:
    if isinstance(value, dict):
        return {k: _resolve_env(v, source, (*path, str(k))) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_env(v, source, (*path, str(i))) for i, v in enumerate(value)]
    if isinstance(value, str):
        match = _ENV_REF.match(value.strip())
        if match:
            var = match.group(1)
            if var in os.environ:
                return os.environ[var]
            override = next((k for k, p in ENV_OVERRIDES.items() if p == path), None)
            if override and os.environ.get(override):
                return os.environ[override]
            raise ConfigError(f"environment variable {var} is not set", source=source, path=".".join(path))
    return value


def _set_in(data: dict[str, Any], keys: tuple[str, ...], value: str) -> None:
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value


def _validate_schema(data: dict[str, Any], source: str) -> None:
    validator = jsonschema.Draft202012Validator(
        CONFIG_SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
    errors = sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path)))
    if not errors:
        return
    err = errors[0]
    key_path = ".".join(str(p) for p in err.absolute_path) or "(top level)"
    message = err.message
    if err.validator == "additionalProperties":
        known = set(err.schema.get("properties", {})) if isinstance(err.schema, dict) else set()
        unknown = sorted(str(k) for k in err.instance if k not in known)
        if unknown:
            # Name the offending key itself in the path: businesses.0.colour, not businesses.0.
            key_path = unknown[0] if key_path == "(top level)" else f"{key_path}.{unknown[0]}"
            message = f"unknown key {unknown[0]!r}; known keys here: {', '.join(sorted(known))}"
        else:
            message = f"unknown key: {message}"
    elif err.validator == "pattern" and "E164" not in message:
        if "numbers" in key_path or "phones" in key_path:
            message = f"{err.instance!r} is not an E.164 phone number like +15550100001"
    # Never echo a secret back in an error.
    if any(
        str(p) in ("auth_token", "secondary_auth_token", "password_hash", "secret_key")
        for p in err.absolute_path
    ):
        message = "invalid value (not shown: it is a secret)"
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    raise ConfigError(message + more, source=source, path=key_path)


def _build(data: dict[str, Any], source: str) -> Config:
    warnings: list[str] = []
    twilio = data.get("twilio", {})
    worker = WorkerSettings(**data.get("worker", {}))
    twilio_settings = TwilioSettings(
        account_sid=twilio.get("account_sid"),
        auth_token=twilio.get("auth_token") or None,
        secondary_auth_token=twilio.get("secondary_auth_token") or None,
        api_base_url=twilio.get("api_base_url"),
        timeout_seconds=float(twilio.get("timeout_seconds", 10.0)),
        lookup_cache_days=int(twilio.get("lookup_cache_days", 30)),
    )
    if worker.lease_seconds <= twilio_settings.timeout_seconds:
        raise ConfigError(
            "must be longer than twilio.timeout_seconds, or a slow send could be claimed twice",
            source=source,
            path="worker.lease_seconds",
        )
    businesses = []
    seen_ids: set[str] = set()
    seen_numbers: dict[str, str] = {}
    for index, raw in enumerate(data["businesses"]):
        business = _build_business(raw, source, f"businesses.{index}", warnings)
        if business.id in seen_ids:
            raise ConfigError(
                f"duplicate business id {business.id!r}", source=source, path=f"businesses.{index}.id"
            )
        seen_ids.add(business.id)
        for number in business.numbers:
            if number in seen_numbers:
                raise ConfigError(
                    f"number {number} already belongs to business {seen_numbers[number]!r}",
                    source=source,
                    path=f"businesses.{index}.numbers",
                )
            seen_numbers[number] = business.id
        businesses.append(business)
    return Config(
        source=source,
        database_url=data.get("database_url") or "sqlite:///textback.db",
        public_url=(data.get("public_url") or "").rstrip("/") or None,
        twilio=twilio_settings,
        worker=worker,
        log_level=data.get("logging", {}).get("level", "INFO"),
        businesses=tuple(businesses),
        secret_key_file=data.get("secret_key_file"),
        smtp=bs.build_smtp(data.get("smtp")),
        raw=data,
        warnings=tuple(warnings),
        console=_build_console(data.get("console") or {}, source),
    )


def _build_console(raw: dict[str, Any], source: str) -> ConsoleSettings:
    password_hash = raw.get("password_hash") or None
    if password_hash and not str(password_hash).startswith(("scrypt:", "pbkdf2:")):
        raise ConfigError(
            "not a password hash (make one with `textback console hash-password`)",
            source=source,
            path="console.password_hash",
        )
    return ConsoleSettings(
        password_hash=password_hash,
        secret_key=raw.get("secret_key") or None,
        allow_remote=bool(raw.get("allow_remote", False)),
        session_minutes=int(raw.get("session_minutes", 60)),
    )


def _build_business(raw: dict[str, Any], source: str, at: str, warnings: list[str]) -> Business:
    try:
        ZoneInfo(raw["timezone"])
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"unknown time zone {raw['timezone']!r}; use an IANA name like America/Chicago",
            source=source,
            path=f"{at}.timezone",
        ) from None
    hours_raw = raw.get("hours", DEFAULT_HOURS)
    hours = {DAYS.index(day): [parse_range(r) for r in ranges] for day, ranges in hours_raw.items()}
    templates = dict(tpl.DEFAULTS)
    templates.update(raw.get("templates", {}))
    booking_link = raw.get("booking_link")
    for name, text in templates.items():
        where = f"{at}.templates.{name}"
        try:
            used = tpl.fields_in(text)
        except ValueError as exc:
            raise ConfigError(f"broken braces in template ({exc})", source=source, path=where) from None
        unknown = used - tpl.MERGE_FIELDS
        if unknown:
            known = ", ".join("{" + f + "}" for f in sorted(tpl.MERGE_FIELDS))
            raise ConfigError(
                f"unknown merge field(s) {', '.join(sorted(unknown))}; known fields: {known}",
                source=source,
                path=where,
            )
        if "booking_link" in used and not booking_link:
            raise ConfigError(
                "uses {booking_link} but the business has no booking_link", source=source, path=where
            )
        if name in tpl.FIRST_MESSAGES:
            if "business" not in used and raw["name"] not in text:
                raise ConfigError(
                    "the first text must name the business: add {business}", source=source, path=where
                )
            if "STOP" not in text:
                raise ConfigError(
                    "the first text must say how to opt out, e.g. 'Reply STOP to opt out.'",
                    source=source,
                    path=where,
                )
            sample = tpl.render(
                text, business=raw["name"], first_name="Christopher", booking_link=booking_link
            )
            seg = tpl.segments(sample)
            if seg.count > 2:
                warnings.append(
                    f"{source}: {where}: renders to {seg.count} SMS segments ({seg.encoding}, "
                    f"{seg.units} units); keep it to 2 or fewer"
                )
    policy_raw = raw.get("policy", {})
    window_raw = policy_raw.get("sending_window", {"start": "08:00", "end": "21:00"})
    blocklist = set()
    for i, number in enumerate(policy_raw.get("blocklist", [])):
        e164 = to_e164(number)
        if e164 is None:
            raise ConfigError(
                f"{number!r} is not a phone number", source=source, path=f"{at}.policy.blocklist.{i}"
            )
        blocklist.add(e164)
    policy = Policy(
        min_ring_seconds=float(policy_raw.get("min_ring_seconds", 4)),
        cooldown_hours=float(policy_raw.get("cooldown_hours", 12)),
        send_delay_seconds=float(policy_raw.get("send_delay_seconds", 0)),
        window=parse_range(f"{window_raw['start']}-{window_raw['end']}"),
        blocklist=frozenset(blocklist),
        lookup_line_type=bool(policy_raw.get("lookup_line_type", False)),
        voicemail=bool(policy_raw.get("voicemail", True)),
        follow_up_after_hours=float(policy_raw.get("follow_up_after_hours", 0)),
        crm_lookup_budget_ms=int(policy_raw.get("crm_lookup_budget_ms", 800)),
    )
    for key in ("numbers", "staff_phones"):
        for i, number in enumerate(raw.get(key, [])):
            # The schema checks the shape; a number of the wrong length for its country would
            # never match a call, so it is refused here.
            if to_e164(number) != number:
                raise ConfigError(
                    f"{number!r} is not a possible phone number (wrong length for its country code)",
                    source=source,
                    path=f"{at}.{key}.{i}",
                )
    mode = raw.get("mode", "ring_through")
    staff = tuple(raw.get("staff_phones", []))
    if mode == "ring_through" and not staff:
        raise ConfigError(
            "ring_through mode needs at least one staff phone to ring (or set mode: forward)",
            source=source,
            path=f"{at}.staff_phones",
        )
    return Business(
        id=raw["id"],
        name=raw["name"],
        tz_name=raw["timezone"],
        numbers=tuple(raw["numbers"]),
        staff_phones=staff,
        mode=mode,
        ring_timeout=int(raw.get("ring_timeout", 20)),
        hours=hours,
        holidays=frozenset(date.fromisoformat(d) for d in raw.get("holidays", [])),
        booking_link=booking_link,
        templates=templates,
        policy=policy,
        conversation=bs.build_conversation(raw.get("conversation", {})),
        booking=bs.build_booking(raw.get("booking", {})),
        escalation=bs.build_escalation(raw.get("escalation", {}), staff, source, f"{at}.escalation"),
    )


def masked(config: Config) -> dict[str, Any]:
    """The effective config with every secret replaced by ``***`` (for display)."""
    import copy

    data = copy.deepcopy(config.raw)
    for key in ("auth_token", "secondary_auth_token"):
        if data.get("twilio", {}).get(key):
            data["twilio"][key] = "***"
    if data.get("smtp", {}).get("password"):
        data["smtp"]["password"] = "***"  # noqa: S105 - the mask, not a password
    for key in ("password_hash", "secret_key"):
        if (data.get("console") or {}).get(key):
            data["console"][key] = "***"
    if "database_url" in data:
        data["database_url"] = re.sub(r"://([^:/@]+):[^@]+@", r"://\1:***@", data["database_url"])
    return data
