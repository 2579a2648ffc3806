"""The ``textback`` command."""

from __future__ import annotations

import json
import signal
import sys
import threading
from datetime import timedelta
from typing import Any

import click

from core import config as config_mod
from core.errors import ConfigError, NotMigratedError, TextbackError

CONFIG_OPTION = click.option(
    "--config",
    "config_path",
    default=None,
    help="Config file (default: $TEXTBACK_CONFIG, then ./textback.yaml).",
)


def load_config(path: str | None) -> config_mod.Config:
    cfg = config_mod.load(path)
    for warning in cfg.warnings:
        click.echo(f"warning: {warning}", err=True)
    return cfg


class Cli(click.Group):
    """Turns textback's own errors into one clear line and exit code 2, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (ConfigError, NotMigratedError) as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except TextbackError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)


@click.group(cls=Cli)
@click.version_option(package_name="textback")
def main() -> None:
    """textback: text back every missed call and log the lead in your CRM."""


@main.command()
@CONFIG_OPTION
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=2, show_default=True, type=int, help="gunicorn worker processes")
@click.option("--threads", default=4, show_default=True, type=int, help="threads per worker")
@click.option("--insecure-dev", is_flag=True, help="Run without a Twilio auth token (no signature checks).")
def serve(
    config_path: str | None, host: str, port: int, workers: int, threads: int, insecure_dev: bool
) -> None:
    """Run the bridge (Twilio webhooks) under gunicorn."""
    from bridge.server import run_gunicorn
    from core import logs
    from core.db import make_engine, require_migrated

    cfg = load_config(config_path)
    logs.setup(cfg.log_level)
    if not cfg.twilio.auth_token and not insecure_dev:
        raise ConfigError(
            "no Twilio auth token (twilio.auth_token or TEXTBACK_TWILIO_AUTH_TOKEN), so webhook "
            "signatures cannot be checked; refusing to start (use --insecure-dev only on a laptop)",
            source=cfg.source,
        )
    require_migrated(make_engine(cfg.database_url), cfg.source)
    run_gunicorn(cfg, host, port, workers, threads, insecure_dev)


@main.command()
@CONFIG_OPTION
@click.option("--threads", type=int, default=None, help="General job threads (default: worker.threads, 2).")
@click.option(
    "--text-threads", type=int, default=None, help="Threads for texts only (default: worker.text_threads, 8)."
)
def worker(config_path: str | None, threads: int | None, text_threads: int | None) -> None:
    """Run an outbox worker. Run as many as you like, on as many machines as share the database."""
    from bridge.runtime import build_worker
    from core import logs

    cfg = load_config(config_path)
    logs.setup(cfg.log_level)
    w = build_worker(cfg)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    w.serve(stop, threads, text_threads)


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@CONFIG_OPTION
def db_upgrade(config_path: str | None) -> None:
    """Apply Alembic migrations up to the latest schema."""
    from core.db import current_revision, head_revision, make_engine, upgrade

    cfg = load_config(config_path)
    engine = make_engine(cfg.database_url)
    before = current_revision(engine)
    upgrade(engine)
    click.echo(f"database at revision {head_revision()} (was {before or 'empty'})")


@main.group()
def emulator() -> None:
    """Local vendor emulators that speak the real wire formats."""


@emulator.command("twilio")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8101, show_default=True, type=int)
@click.option("--account-sid", default="AC" + "0" * 31 + "1", show_default=True)
@click.option("--auth-token", default="sandbox-auth-token", show_default=True)
@click.option("--bridge-url", default=None, help="Where to send webhooks (the bridge's base URL).")
def emulator_twilio(host: str, port: int, account_sid: str, auth_token: str, bridge_url: str | None) -> None:
    """Run the Twilio emulator in the foreground."""
    from connectors.twilio.emulator import run

    click.echo(f"Twilio emulator on http://{host}:{port} (bridge: {bridge_url or 'not set'})")
    run(host, port, account_sid, auth_token, bridge_url)


def _generic_emulator(name: str) -> click.Command:
    @click.command(name, help=f"Run the {name} emulator in the foreground.")
    @click.option("--host", default="127.0.0.1", show_default=True)
    @click.option("--port", required=True, type=int)
    def command(host: str, port: int) -> None:
        from connectors.emulators import runner

        click.echo(f"{name} emulator on http://{host}:{port}")
        runner(name)(host, port)

    return command


for _name in ("hubspot", "salesforce", "pipedrive", "google_calendar", "webhook"):
    emulator.add_command(_generic_emulator(_name))


@main.command()
@click.option(
    "--dir", "directory", required=True, type=click.Path(file_okay=False), help="Working directory."
)
@CONFIG_OPTION
def sandbox(directory: str, config_path: str | None) -> None:
    """Start every emulator, the bridge and a worker on 127.0.0.1, until Ctrl-C (or SIGTERM)."""
    from bridge.sandbox import Sandbox

    # Python raises KeyboardInterrupt only if SIGINT was not ignored when it started, and a shell
    # ignores it for the jobs it starts in the background: a sandbox started so would outlive
    # Ctrl-C or kill -INT and leave its processes running. SIGTERM stops it the same way.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with Sandbox(directory, config_path) as sb:
        sb.start()
        click.echo(sb.guide())
        try:
            sb.wait()
        except KeyboardInterrupt:
            click.echo("\nstopping the sandbox...")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the story.")
def demo(as_json: bool) -> None:
    """Run the sandbox for one scripted missed call and show what happened."""
    from bridge.demo import run_demo

    sys.exit(run_demo(as_json))


@main.group()
def jobs() -> None:
    """Inspect and manage the outbox."""


@jobs.command("list")
@CONFIG_OPTION
@click.option("--status", type=click.Choice(["pending", "running", "done", "dead"]), default=None)
@click.option("--limit", default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def jobs_list(config_path: str | None, status: str | None, limit: int, as_json: bool) -> None:
    """List outbox jobs, newest first."""
    from core import outbox
    from core.db import make_engine, require_migrated, session_factory

    cfg = load_config(config_path)
    engine = make_engine(cfg.database_url)
    require_migrated(engine, cfg.source)
    with session_factory(engine)() as session:
        rows = outbox.list_jobs(session, status, limit)
        data: list[dict[str, Any]] = [
            {
                "id": j.id,
                "kind": j.kind,
                "target": j.target,
                "status": j.status,
                "attempts": j.attempts,
                "next_attempt_at": j.next_attempt_at.isoformat(),
                "last_error": j.last_error,
                "lead_id": j.lead_id,
                "business": j.business_id,
            }
            for j in rows
        ]
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("id", "kind", "target", "status", "attempts", "next attempt", "last error")
    for j in data:
        table.add_row(
            str(j["id"]),
            j["kind"],
            j["target"],
            j["status"],
            str(j["attempts"]),
            j["next_attempt_at"][:19],
            (j["last_error"] or "")[:60],
        )
    Console().print(table)


@jobs.command("retry")
@CONFIG_OPTION
@click.argument("job_id", required=False, type=int)
@click.option("--dead", is_flag=True, help="Retry every dead job.")
def jobs_retry(config_path: str | None, job_id: int | None, dead: bool) -> None:
    """Run a job again now (by id), or every dead job (--dead)."""
    from core import outbox
    from core.db import make_engine, require_migrated, session_factory, transaction

    if job_id is None and not dead:
        raise click.UsageError("give a job id, or --dead to retry every dead job")
    cfg = load_config(config_path)
    engine = make_engine(cfg.database_url)
    require_migrated(engine, cfg.source)
    with transaction(session_factory(engine)) as session:
        count = outbox.retry(session, job_id=job_id, dead=dead)
    if job_id is not None and count == 0:
        click.echo(f"error: no job {job_id} that can be retried (it does not exist or is running)", err=True)
        sys.exit(1)
    click.echo(f"{count} job(s) queued to run again")


@jobs.command("purge")
@CONFIG_OPTION
@click.option("--older-than", default="7d", show_default=True, help="Age like 7d, 12h or 30m.")
@click.option("--include-dead", is_flag=True, help="Also delete dead jobs (otherwise they are kept).")
def jobs_purge(config_path: str | None, older_than: str, include_dead: bool) -> None:
    """Delete finished jobs. Dead jobs are kept unless --include-dead is given."""
    from core import outbox
    from core.db import make_engine, require_migrated, session_factory, transaction

    age = parse_age(older_than)
    cfg = load_config(config_path)
    engine = make_engine(cfg.database_url)
    require_migrated(engine, cfg.source)
    with transaction(session_factory(engine)) as session:
        counts = outbox.purge(session, age, include_dead)
    click.echo(", ".join(f"{n} {status} job(s) deleted" for status, n in counts.items()))
    if not include_dead:
        click.echo("dead jobs were kept (use --include-dead to delete them)")


def parse_age(text: str) -> timedelta:
    units = {"d": "days", "h": "hours", "m": "minutes"}
    if len(text) < 2 or text[-1] not in units or not text[:-1].isdigit():
        raise click.BadParameter(f"{text!r}: use a number and a unit, like 7d, 12h or 30m")
    return timedelta(**{units[text[-1]]: int(text[:-1])})


from bridge.cli_connectors import connectors  # noqa: E402
from bridge.cli_console import console  # noqa: E402
from bridge.cli_leads import leads  # noqa: E402
from bridge.cli_reports import replay_calls, report, with_metrics_port  # noqa: E402
from bridge.cli_secrets import secrets  # noqa: E402

main.add_command(console)

main.add_command(leads)
main.add_command(secrets)
main.add_command(connectors)
main.add_command(report)
main.add_command(replay_calls)
with_metrics_port(worker)

if __name__ == "__main__":
    main()
