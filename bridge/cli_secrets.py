"""``textback secrets keygen|rotate``: the key that seals connector secrets and OAuth tokens."""

from __future__ import annotations

import click

from core.secrets import generate_key


@click.group()
def secrets() -> None:
    """The encryption key for connector secrets (TEXTBACK_SECRET_KEY or secret_key_file)."""


@secrets.command("keygen")
def keygen() -> None:
    """Print a new Fernet key. Put it first in TEXTBACK_SECRET_KEY (or secret_key_file)."""
    click.echo(generate_key())


@secrets.command("rotate")
@click.option("--config", "config_path", default=None, help="Config file.")
def rotate(config_path: str | None) -> None:
    """Re-encrypt every stored secret and token with the newest key (keep the old keys until done)."""
    from sqlalchemy import select

    from bridge.cli import load_config
    from core.db import make_engine, require_migrated, session_factory, transaction
    from core.models import ConnectorInstall, OAuthToken
    from core.secrets import SecretBox

    cfg = load_config(config_path)
    engine = make_engine(cfg.database_url)
    require_migrated(engine, cfg.source)
    box = SecretBox(cfg.secret_key_file)
    count = 0
    with transaction(session_factory(engine)) as session:
        for install in session.scalars(select(ConnectorInstall)):
            if install.secrets:
                install.secrets = box.rotate(install.secrets)
                count += 1
        for token in session.scalars(select(OAuthToken)):
            for field in ("access_token", "refresh_token"):
                value = getattr(token, field)
                if value:
                    setattr(token, field, box.rotate(value))
                    count += 1
    click.echo(f"re-encrypted {count} secret(s) with the newest key; the old keys can now be removed")
