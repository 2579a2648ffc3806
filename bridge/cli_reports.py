"""``textback report`` (the recovery funnel), ``textback replay-calls`` (the what-if), and the
``--metrics-port`` option of ``textback worker``.

Nothing at module level imports prometheus_client: ``textback serve`` must set the multiprocess
directory before anything does (bridge.metrics_multiproc).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click

CONFIG_OPTION = click.option(
    "--config",
    "config_path",
    default=None,
    help="Config file (default: $TEXTBACK_CONFIG, then ./textback.yaml).",
)
FORMAT_OPTION = click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
)


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``7d``, ``12h``, ``30m`` back from now, or an ISO date or time (UTC unless it says)."""
    now = now or datetime.now(UTC)
    match = re.fullmatch(r"(\d+)([dhm])", text.strip())
    if match:
        unit = {"d": "days", "h": "hours", "m": "minutes"}[match.group(2)]
        return now - timedelta(**{unit: int(match.group(1))})
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise click.BadParameter(
            f"{text!r}: use an age like 7d, 12h or 30m, or a date like 2026-01-31", param_hint="--since"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _check_business(cfg: Any, business: str | None) -> None:
    if business is not None and cfg.business(business) is None:
        known = ", ".join(b.id for b in cfg.businesses)
        raise click.BadParameter(
            f"no business {business!r} in the config (known: {known})", param_hint="--business"
        )


# -- report -----------------------------------------------------------------------------------------


@click.command()
@CONFIG_OPTION
@click.option("--since", default="7d", show_default=True, help="An age (7d, 12h, 30m) or a date.")
@click.option("--business", default=None, help="Only this business (its id in the config).")
@FORMAT_OPTION
def report(config_path: str | None, since: str, business: str | None, fmt: str) -> None:
    """The recovery funnel (missed, texted, replied, qualified, booked) and response times.

    Definitions: docs/reports.md.
    """
    from bridge.cli import load_config
    from core import report as report_mod
    from core.db import make_engine, require_migrated, session_factory

    start = parse_since(since)
    cfg = load_config(config_path)
    _check_business(cfg, business)
    engine = make_engine(cfg.database_url)
    require_migrated(engine, cfg.source)
    with session_factory(engine)() as session:
        result = report_mod.build(session, cfg, start, datetime.now(UTC), business)
    engine.dispose()
    if fmt == "json":
        click.echo(json.dumps(result.to_json(), indent=2))
    elif fmt == "csv":
        click.echo(_csv(report_mod.rows(result), report_mod.CSV_COLUMNS), nl=False)
    else:
        _report_table(result)


def _csv(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in columns})
    return out.getvalue()


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 60:
        return f"{value:.1f} s"
    if value < 3600:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.1f} h"


def _funnel_table(first: str, title: str | None = None) -> Any:
    from rich.table import Table

    table = Table(first, title=title)
    for name in ("missed", "texted", "replied", "qualified", "booked", "recovered", "to text", "to a person"):
        table.add_column(name, justify="right")
    return table


def _report_table(result: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    from core.report import Funnel

    console = Console()
    console.print(
        f"Recovery report, calls from {result.since:%Y-%m-%d %H:%M} to {result.until:%Y-%m-%d %H:%M} UTC"
    )

    def add(table: Table, label: str, f: Funnel, style: str | None = None) -> None:
        pct = "-" if f.recovered_pct is None else f"{f.recovered} ({f.recovered_pct:.1f}%)"
        data = f.to_json()
        table.add_row(
            label,
            str(f.missed_calls),
            str(f.texted),
            str(f.replied),
            str(f.qualified),
            str(f.booked),
            pct,
            _seconds(data["median_seconds_to_text"]),
            _seconds(data["median_seconds_to_person"]),
            style=style,
        )

    for b in result.businesses:
        table = _funnel_table("day", title=f"{b.business} ({b.timezone})")
        for day, funnel in sorted(b.days.items()):
            add(table, day.isoformat(), funnel)
        add(table, "total", b.total, style="bold")
        console.print(table)
        if b.total.skipped:
            skipped = ", ".join(f"{reason} {n}" for reason, n in sorted(b.total.skipped.items()))
            console.print(f"  missed calls not texted: {skipped}")
    if len(result.businesses) > 1:
        total = _funnel_table("")
        add(total, "all businesses", result.total, style="bold")
        console.print(total)
    console.print(
        "recovered % = (replied or booked) / missed calls; medians over texted calls (docs/reports.md)"
    )


# -- replay-calls -----------------------------------------------------------------------------------


def _rate(_ctx: click.Context, param: click.Parameter, value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise click.BadParameter(f"{value} is not a share between 0 and 1 (e.g. 0.3)", param=param)
    return value


@click.command("replay-calls")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@CONFIG_OPTION
@click.option("--business", default=None, help="Treat every call as this business's (default: by number).")
@click.option(
    "--reply-rate",
    type=float,
    default=None,
    callback=lambda ctx, p, v: None if v is None else _rate(ctx, p, v),
    help="Share of texted callers who reply (default 0.30; measure yours with `textback report`).",
)
@click.option(
    "--never-call-back",
    type=float,
    default=None,
    callback=lambda ctx, p, v: None if v is None else _rate(ctx, p, v),
    help="Share of unreached callers who never call back (default 0.85).",
)
@FORMAT_OPTION
@click.option("--summary-only", is_flag=True, help="Leave out the per-call list.")
def replay_calls(
    files: tuple[Path, ...],
    config_path: str | None,
    business: str | None,
    reply_rate: float | None,
    never_call_back: float | None,
    fmt: str,
    summary_only: bool,
) -> None:
    """What textback would have done with the calls in a Twilio call export (FILES).

    FILES are BulkExport day files (gzip JSON lines of Call records, parent calls and their
    outbound-dial legs), plain JSON lines, or CSV with the Call fields. Nothing is sent and
    nothing is written: not to Twilio, not to a CRM, not to the database.
    """
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

    from bridge.cli import load_config
    from core import replay as replay_mod

    cfg = load_config(config_path)
    _check_business(cfg, business)
    records: list[replay_mod.CallRecord] = []
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), console=Console(stderr=True)
    )
    with progress:
        for path in files:
            size = path.stat().st_size if path.is_file() else 0
            task = progress.add_task(f"reading {path.name}", total=size or None)
            records.extend(replay_mod.read(path, _bytes_read(progress, task)))
            progress.update(task, completed=size)
        parents = sum(1 for r in records if not r.parent_call_sid and r.direction == "inbound")
        task = progress.add_task("deciding", total=parents)
        result = replay_mod.replay(records, cfg, business, on_call=lambda _c: progress.advance(task))
    estimate = result.estimate(
        replay_mod.DEFAULT_REPLY_RATE if reply_rate is None else reply_rate,
        replay_mod.NEVER_CALL_BACK if never_call_back is None else never_call_back,
    )
    if fmt == "json":
        data = result.to_json(estimate)
        if summary_only:
            data.pop("calls")
        click.echo(json.dumps(data, indent=2))
    elif fmt == "csv":
        rows = [c.to_json() for c in result.calls]
        columns = (
            "call_sid",
            "business",
            "from",
            "started_at",
            "outcome",
            "reason",
            "ring_seconds",
            "send_at",
        )
        click.echo(_csv(rows, columns), nl=False)
    else:
        _replay_table(result, estimate, summary_only, cfg)


def _bytes_read(progress: Any, task: Any) -> Any:
    def update(position: int) -> None:
        progress.update(task, completed=position)

    return update


def _replay_table(result: Any, estimate: Any, summary_only: bool, cfg: Any) -> None:
    from zoneinfo import ZoneInfo

    from rich.console import Console
    from rich.table import Table

    from core.phones import mask

    console = Console()
    if not summary_only:
        calls = Table("started (business time)", "caller", "business", "what textback would do", "why")
        for c in result.calls:
            business = cfg.business(c.business) if c.business else None
            tz = ZoneInfo(business.tz_name) if business else UTC
            what = {"text": "text", "skip": "skip", "ignored": "ignore"}[c.outcome]
            if c.outcome == "text" and c.held and c.send_at is not None:
                what += f" (held until {c.send_at.astimezone(tz):%H:%M})"
            calls.add_row(
                f"{c.started_at.astimezone(tz):%Y-%m-%d %H:%M:%S}",
                mask(c.caller) if c.caller.startswith("+") else c.caller or "-",
                c.business or "-",
                what,
                c.reason,
                style="green" if c.outcome == "text" else None,
            )
        console.print(calls)
    summary = Table("outcome", "reason", "calls", title="Summary")
    for outcome, reasons in result.summary.items():
        for reason, n in reasons.items():
            summary.add_row(outcome, reason, str(n))
    console.print(summary)
    if result.not_replayed:
        other = ", ".join(f"{what}: {n}" for what, n in sorted(result.not_replayed.items()))
        console.print(f"Records that are not inbound calls (not replayed): {other}")
    e = estimate
    console.print(
        f"[bold]{sum(result.summary['text'].values())} of {len(result.calls)} inbound calls would have been "
        f"texted[/bold] ({e.texted_callers} different callers).\n"
        f"Without a text, about {e.never_call_back:.0%} of callers who reach nobody never call back: "
        f"~{e.would_be_lost:.1f} of them.\n"
        f"If {e.reply_rate:.0%} of texted callers reply (--reply-rate), textback would have recovered "
        f"[bold]~{e.recovered:.1f} leads[/bold]. Nothing was sent or stored."
    )


# -- textback worker --metrics-port -----------------------------------------------------------------


def with_metrics_port(command: click.Command) -> click.Command:
    """Give ``textback worker`` ``--metrics-port``/``--metrics-host``, serving its own counters.

    A worker never writes into the bridge's multiprocess directory: ``PROMETHEUS_MULTIPROC_DIR``
    is dropped from its environment before prometheus_client is imported (docs/metrics.md).
    """
    command.params.append(
        click.Option(
            ["--metrics-port"],
            type=int,
            default=None,
            help="Serve this worker's Prometheus metrics on this port (default: off).",
        )
    )
    command.params.append(
        click.Option(
            ["--metrics-host"], default="127.0.0.1", show_default=True, help="Address for --metrics-port."
        )
    )
    original = command.callback
    assert original is not None

    def callback(*args: Any, metrics_port: int | None, metrics_host: str, **kwargs: Any) -> Any:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        if metrics_port is not None:
            from bridge.metrics import serve_worker_metrics
            from core import logs

            logs.setup()  # JSON from the first line; the worker sets its configured level next

            try:
                serve_worker_metrics(metrics_host, metrics_port)
            except OSError as exc:
                where = f"{metrics_host}:{metrics_port}"
                click.echo(f"error: cannot serve metrics on {where} ({exc.strerror})", err=True)
                sys.exit(2)
        return original(*args, **kwargs)

    command.callback = callback
    return command
