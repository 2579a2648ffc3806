"""``textback connectors list|install|check|remove|new``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
import yaml
from sqlalchemy import select

from core.errors import ConfigError

CONFIG_OPTION = click.option("--config", "config_path", default=None, help="Config file.")
BUSINESS_OPTION = click.option("--business", default=None, help="Business id (optional with one business).")


def _context(config_path: str | None) -> tuple[Any, Any]:
    from bridge.cli import load_config
    from core.db import make_engine, require_migrated, session_factory

    cfg = load_config(config_path)
    engine = make_engine(cfg.database_url)
    require_migrated(engine, cfg.source)
    return cfg, session_factory(engine)


def _business(cfg: Any, business: str | None) -> str:
    if business:
        if cfg.business(business) is None:
            known = ", ".join(b.id for b in cfg.businesses)
            raise ConfigError(f"no business {business!r} in {cfg.source} (known: {known})")
        return business
    if len(cfg.businesses) == 1:
        return str(cfg.businesses[0].id)
    raise click.UsageError("several businesses are configured: pass --business")


@click.group()
def connectors() -> None:
    """Connector manifests, installs and health."""


@connectors.command("list")
@CONFIG_OPTION
@click.option("--json", "as_json", is_flag=True)
def list_cmd(config_path: str | None, as_json: bool) -> None:
    """Available connectors (entry points) and what each business has installed."""
    from connectors import registry
    from core.models import ConnectorInstall, ConnectorState

    available: list[dict[str, Any]] = []
    for cid in registry.available():
        try:
            loaded = registry.load(cid)
            available.append(
                {
                    "id": cid,
                    "name": loaded.manifest.name,
                    "version": loaded.manifest.version,
                    "capabilities": sorted(c.value for c in loaded.manifest.capabilities),
                    "distribution": loaded.distribution,
                    "error": None,
                }
            )
        except ConfigError as exc:
            available.append({"id": cid, "error": str(exc)})
    installed = []
    if config_path or Path("textback.yaml").exists():
        _cfg, factory = _context(config_path)
        with factory() as session:
            for inst in session.scalars(select(ConnectorInstall).order_by(ConnectorInstall.business_id)):
                st = session.get(ConnectorState, (inst.business_id, inst.connector_id))
                installed.append(
                    {
                        "business": inst.business_id,
                        "connector": inst.connector_id,
                        "version": inst.version,
                        "enabled": inst.enabled,
                        "paused_until": st.paused_until.isoformat() if st and st.paused_until else None,
                        "last_success_at": st.last_success_at.isoformat()
                        if st and st.last_success_at
                        else None,
                        "last_error": st.last_error if st else None,
                    }
                )
    if as_json:
        click.echo(json.dumps({"available": available, "installed": installed}, indent=2))
        return
    click.echo("Available connectors:")
    for a in available:
        if a.get("error"):
            click.echo(f"  {a['id']:<16} BROKEN: {a['error']}")
        else:
            click.echo(f"  {a['id']:<16} {a['name']} {a['version']}  [{', '.join(a['capabilities'])}]")
    if installed:
        click.echo("Installed:")
        for i in installed:
            state = "paused until " + i["paused_until"] if i["paused_until"] else "active"
            click.echo(
                f"  {i['business']}/{i['connector']} {i['version']}: {state}"
                + (f"; last error: {i['last_error'][:80]}" if i["last_error"] else "")
            )


def _read_settings(config_file: str | None, sets: tuple[str, ...]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    if config_file:
        try:
            loaded = yaml.safe_load(Path(config_file).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read connector settings ({exc})", source=config_file) from None
        if not isinstance(loaded, dict):
            raise ConfigError("connector settings must be a mapping", source=config_file)
        data.update(loaded)
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r}: use KEY=VALUE")
        try:
            data[key] = yaml.safe_load(value)
        except yaml.YAMLError:
            data[key] = value
        if (
            isinstance(data[key], (int, float))
            and not isinstance(data[key], bool)
            and key.endswith(("_id", "token"))
        ):
            data[key] = value
    return data


@connectors.command("install")
@click.argument("path_or_id")
@CONFIG_OPTION
@BUSINESS_OPTION
@click.option(
    "--config-file", "settings_file", default=None, help="YAML with the connector's settings (and sync:)."
)
@click.option("--set", "sets", multiple=True, help="KEY=VALUE setting (repeatable).")
@click.option("--no-check", is_flag=True, help="Store without the live check.")
def install_cmd(
    path_or_id: str,
    config_path: str | None,
    business: str | None,
    settings_file: str | None,
    sets: tuple[str, ...],
    no_check: bool,
) -> None:
    """Validate a connector's manifest and settings, store them (secrets encrypted), then check it."""
    from bridge.installer import install
    from bridge.runtime import Connectors

    cfg, factory = _context(config_path)
    business_id = _business(cfg, business)
    settings = _read_settings(settings_file, sets)
    man, secrets = install(cfg, factory, path_or_id, business_id, settings, settings_file or "--set")
    names = ", ".join(secrets) or "none"
    click.echo(f"installed {man.name} {man.version} for {business_id} (secrets encrypted: {names})")
    if no_check:
        return
    _run_check(Connectors(cfg, factory), business_id, man.id)


def _run_check(runtime: Any, business_id: str, connector_id: str) -> None:
    try:
        result = runtime.build(business_id, connector_id).check()
    except ConfigError:
        raise
    except Exception as exc:
        click.echo(f"check failed: {exc}", err=True)
        sys.exit(1)
    click.echo(("ok: " if result.ok else "check failed: ") + result.summary)
    for line in result.details:
        click.echo(f"  - {line}")
    if not result.ok:
        sys.exit(1)


@connectors.command("check")
@click.argument("connector_id")
@CONFIG_OPTION
@BUSINESS_OPTION
def check_cmd(connector_id: str, config_path: str | None, business: str | None) -> None:
    """Make a live, harmless call and explain any failure in plain words."""
    from bridge.runtime import Connectors

    cfg, factory = _context(config_path)
    _run_check(Connectors(cfg, factory), _business(cfg, business), connector_id)


@connectors.command("remove")
@click.argument("connector_id")
@CONFIG_OPTION
@BUSINESS_OPTION
def remove_cmd(connector_id: str, config_path: str | None, business: str | None) -> None:
    """Uninstall a connector for a business (its sync ledger is kept for a reinstall)."""
    from core.db import transaction
    from core.models import ConnectorInstall, OAuthToken

    cfg, factory = _context(config_path)
    business_id = _business(cfg, business)
    with transaction(factory) as session:
        row = session.get(ConnectorInstall, (business_id, connector_id))
        if row is None:
            click.echo(f"error: {connector_id} is not installed for {business_id}", err=True)
            sys.exit(1)
        session.delete(row)
        token = session.get(OAuthToken, (business_id, connector_id))
        if token is not None:
            session.delete(token)
    click.echo(f"removed {connector_id} from {business_id}")


@connectors.command("new")
@click.argument("name")
@click.option("--dir", "directory", default=".", show_default=True, type=click.Path(file_okay=False))
def new_cmd(name: str, directory: str) -> None:
    """Scaffold a connector package (manifest, connector, emulator, tests) that passes the kit."""
    from bridge.scaffold import scaffold

    path = scaffold(name, Path(directory))
    click.echo(f"created {path}\nnext: cd {path} && pip install -e . && pytest")
