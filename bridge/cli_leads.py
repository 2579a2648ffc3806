"""``textback leads list|show``."""

from __future__ import annotations

import json
import sys
from typing import Any

import click
from sqlalchemy import select
from sqlalchemy.orm import Session

CONFIG_OPTION = click.option("--config", "config_path", default=None, help="Config file.")


def _session(config_path: str | None) -> Session:
    from bridge.cli import load_config
    from core.db import make_engine, require_migrated, session_factory

    cfg = load_config(config_path)
    engine = make_engine(cfg.database_url)
    require_migrated(engine, cfg.source)
    return session_factory(engine)()


@click.group()
def leads() -> None:
    """Show leads."""


@leads.command("list")
@CONFIG_OPTION
@click.option("--business", default=None, help="Only this business id.")
@click.option("--limit", default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def leads_list(config_path: str | None, business: str | None, limit: int, as_json: bool) -> None:
    """List leads, newest first."""
    from core import leads as leads_mod
    from core.models import Lead

    with _session(config_path) as session:
        query = select(Lead).order_by(Lead.created_at.desc()).limit(limit)
        if business:
            query = query.where(Lead.business_id == business)
        rows = [leads_mod.to_json(session, lead) for lead in session.scalars(query)]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("id", "business", "phone", "name", "status", "opted out", "created")
    for r in rows:
        table.add_row(
            r["id"][:8],
            r["business"],
            r["phone"],
            r["name"] or "",
            r["status"],
            "yes" if r["opted_out"] else "",
            r["created_at"][:19],
        )
    Console().print(table)


@leads.command("show")
@CONFIG_OPTION
@click.argument("phone_or_id")
@click.option("--business", default=None, help="Business id, when the phone has leads in several.")
@click.option("--json", "as_json", is_flag=True)
def leads_show(config_path: str | None, phone_or_id: str, business: str | None, as_json: bool) -> None:
    """Show one lead by phone number (any format) or id."""
    from core import leads as leads_mod
    from core.models import Lead
    from core.phones import to_e164

    with _session(config_path) as session:
        phone = to_e164(phone_or_id)
        query = select(Lead).where(
            (Lead.id == phone_or_id)
            | (Lead.id.startswith(phone_or_id) if len(phone_or_id) >= 8 else False)
            | (Lead.phone == phone if phone else False)
        )
        if business:
            query = query.where(Lead.business_id == business)
        found = list(session.scalars(query))
        if not found:
            click.echo(f"error: no lead matches {phone_or_id!r}", err=True)
            sys.exit(1)
        if len(found) > 1:
            click.echo(
                "error: several leads match; add --business: "
                + ", ".join(lead.business_id for lead in found),
                err=True,
            )
            sys.exit(1)
        data = leads_mod.to_json(session, found[0])
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(render_lead(data))


def render_lead(data: dict[str, Any]) -> str:
    lines = [
        f"Lead {data['id']}  ({data['business']})",
        f"  phone: {data['phone']}   name: {data['name'] or '-'}   status: {data['status']}"
        f"   opted out: {'yes' if data['opted_out'] else 'no'}",
        "  timeline:",
    ]
    for e in data["timeline"]:
        at = (e.get("at") or "")[:19].replace("T", " ")
        if e["type"] == "decision":
            detail = f"decision: {e['outcome']} ({e['reason']})"
        elif e["type"] == "message":
            arrow = "->" if e["direction"] == "outbound" else "<-"
            detail = f"text {arrow} [{e['status']}] {e['body']}"
        elif e["type"] == "call":
            detail = f"call {e.get('status')}" + (" (repeat)" if e.get("repeat") else "")
        elif e["type"] == "voicemail":
            detail = f"voicemail ({e.get('duration') or '?'} s) {e.get('recording_url') or ''}"
        elif e["type"] == "transcript":
            detail = f"transcript: {e.get('text')}"
        else:
            detail = e["type"]
        lines.append(f"    {at}  {detail}")
    return "\n".join(lines)
