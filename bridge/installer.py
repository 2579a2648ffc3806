"""Installing a connector for a business: validate, encrypt the secrets, store (CLI and sandbox)."""

from __future__ import annotations

from typing import Any

import jsonschema
from sqlalchemy.orm import Session, sessionmaker

from bridge.runtime import Connectors
from connectors import manifest as manifest_mod
from connectors import registry
from connectors.manifest import Manifest
from core import connector_state
from core.config import Config
from core.db import transaction
from core.errors import ConfigError
from core.models import ConnectorInstall, ConnectorState
from core.sync import SYNC_SCHEMA


def install(
    cfg: Config,
    factory: sessionmaker[Session],
    path_or_id: str,
    business_id: str,
    settings: dict[str, Any],
    source: str,
) -> tuple[Manifest, list[str]]:
    """Store the connector's settings (secrets sealed). Returns the manifest and the secret names."""
    loaded = registry.load_manifest_or_id(path_or_id)
    man = loaded.manifest
    settings = dict(settings)
    sync = settings.pop("sync", {}) or {}
    manifest_mod.validate_config(man, settings, source=source)
    errors = list(jsonschema.Draft202012Validator(SYNC_SCHEMA).iter_errors(sync))
    if errors:
        where = ".".join(map(str, errors[0].absolute_path)) or "(top level)"
        raise ConfigError(errors[0].message, source=source, path=f"sync.{where}")
    secrets = {k: v for k, v in settings.items() if k in man.secret_keys}
    plain = {k: v for k, v in settings.items() if k not in man.secret_keys}
    sealed = Connectors(cfg, factory).box.seal(secrets) if secrets else None
    with transaction(factory) as session:
        row = session.get(ConnectorInstall, (business_id, man.id))
        if row is None:
            row = ConnectorInstall(business_id=business_id, connector_id=man.id)
            session.add(row)
        row.version, row.config, row.secrets, row.sync, row.enabled = man.version, plain, sealed, sync, True
        # New settings are the admin's answer to an auth alert: the paused jobs resume now.
        state = session.get(ConnectorState, (business_id, man.id))
        if state is not None and (state.pause_reason or "").startswith("auth"):
            connector_state.resume(session, business_id, man.id)
    return man, sorted(secrets)
