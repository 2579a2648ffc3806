"""Connector manifests: closed, versioned data that describes a connector (never implements one)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from core.crm import Capability
from core.errors import ConfigError

MANIFEST_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "textback connector manifest, version 1",
    "type": "object",
    "additionalProperties": False,
    "required": [
        "manifest_version",
        "id",
        "name",
        "version",
        "entry_point",
        "capabilities",
        "auth",
        "config_schema",
        "rate_limits",
        "allowed_hosts",
        "docs_url",
    ],
    "properties": {
        "manifest_version": {"const": 1},
        "id": {"type": "string", "pattern": r"^[a-z][a-z0-9_]{1,40}$"},
        "name": {"type": "string", "minLength": 1, "maxLength": 80},
        "version": {"type": "string", "pattern": r"^\d+\.\d+\.\d+$"},
        "entry_point": {"type": "string", "pattern": r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$"},
        "description": {"type": "string", "maxLength": 500},
        "capabilities": {
            "type": "array",
            "uniqueItems": True,
            "minItems": 1,
            "items": {"enum": [c.value for c in Capability]},
        },
        "auth": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["kind", "secrets"],
                "properties": {
                    "kind": {
                        "enum": [
                            "api_token",
                            "private_app_token",
                            "oauth",
                            "jwt_bearer",
                            "client_credentials",
                            "service_account",
                            "hmac_secret",
                            "legacy_password",
                        ]
                    },
                    "secrets": {"type": "array", "items": {"type": "string"}},
                    "description": {"type": "string"},
                },
            },
        },
        "config_schema": {"type": "object"},
        "rate_limits": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name", "requests", "per_seconds"],
                "properties": {
                    "name": {"type": "string"},
                    "requests": {"type": "integer", "minimum": 1},
                    "per_seconds": {"type": "number", "exclusiveMinimum": 0},
                },
            },
        },
        "allowed_hosts": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "docs_url": {"type": "string", "pattern": "^https://"},
    },
}


@dataclass(frozen=True)
class Manifest:
    id: str
    name: str
    version: str
    entry_point: str
    capabilities: frozenset[Capability]
    auth: tuple[dict[str, Any], ...]
    config_schema: dict[str, Any]
    rate_limits: tuple[dict[str, Any], ...]
    allowed_hosts: tuple[str, ...]
    docs_url: str
    source: str

    @property
    def secret_keys(self) -> set[str]:
        props = self.config_schema.get("properties", {})
        return {k for k, v in props.items() if isinstance(v, dict) and v.get("writeOnly")}


def parse(data: Any, source: str) -> Manifest:
    if not isinstance(data, dict):
        raise ConfigError("a manifest must be a mapping", source=source)
    errors = sorted(
        jsonschema.Draft202012Validator(MANIFEST_SCHEMA).iter_errors(data),
        key=lambda e: list(map(str, e.absolute_path)),
    )
    if errors:
        err = errors[0]
        where = ".".join(map(str, err.absolute_path)) or "(top level)"
        hint = ""
        if err.validator == "const" and list(err.absolute_path) == ["manifest_version"]:
            hint = " (this textback reads manifest_version 1)"
        raise ConfigError(f"{err.message}{hint}", source=source, path=where)
    try:
        jsonschema.Draft202012Validator.check_schema(data["config_schema"])
    except jsonschema.SchemaError as exc:
        raise ConfigError(
            f"config_schema is not a valid JSON Schema: {exc.message}", source=source, path="config_schema"
        ) from None
    props = data["config_schema"].get("properties", {})
    for i, auth in enumerate(data["auth"]):
        for secret in auth["secrets"]:
            if secret not in props:
                raise ConfigError(
                    f"secret {secret!r} is not a property of config_schema",
                    source=source,
                    path=f"auth.{i}.secrets",
                )
            if not props[secret].get("writeOnly"):
                raise ConfigError(
                    f"secret {secret!r} must be marked writeOnly: true in config_schema",
                    source=source,
                    path=f"config_schema.properties.{secret}",
                )
    return Manifest(
        id=data["id"],
        name=data["name"],
        version=data["version"],
        entry_point=data["entry_point"],
        capabilities=frozenset(Capability(c) for c in data["capabilities"]),
        auth=tuple(data["auth"]),
        config_schema=data["config_schema"],
        rate_limits=tuple(data["rate_limits"]),
        allowed_hosts=tuple(data["allowed_hosts"]),
        docs_url=data["docs_url"],
        source=source,
    )


def load(path: str | Path) -> Manifest:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read manifest ({exc.strerror})", source=str(path)) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML ({exc})", source=str(path)) from None
    return parse(data, str(path))


def validate_config(manifest: Manifest, config: dict[str, Any], source: str = "connector config") -> None:
    validator = jsonschema.Draft202012Validator(manifest.config_schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        err = errors[0]
        where = ".".join(map(str, err.absolute_path)) or "(top level)"
        message = err.message
        if err.absolute_path and str(err.absolute_path[0]) in manifest.secret_keys:
            message = "invalid value (not shown: it is a secret)"
        elif err.validator == "required":
            message = f"{message} (see {manifest.docs_url})"
        raise ConfigError(message, source=source, path=where)
