"""Where a missed-call webhook's time goes, in process (no network, no other process competing).

    python -m bench.profile_webhook --db sqlite|postgres [--calls 300] [--status] [--rounds 5] [--top 25]

Builds the bridge app on a fresh database (like ``textback serve`` does), sends ``--calls`` signed
forward-mode ``/twilio/voice`` webhooks through Flask's test client, and prints the wall and CPU
time per webhook (and the quietest of ``--rounds`` rounds), the SQL statements per webhook, and
the cProfile functions with the most cumulative time. With ``--status`` the measured webhooks are
instead Twilio's message status callbacks (``sent`` then ``delivered``, as Twilio sends them)
for the texts of ``--calls / 2`` missed calls, each text given a sid as the send worker would.
Bounded by ``--calls``; figures only, no assertions.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import logging
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from bench.load import Request, Signer
from bench.stack import ACCOUNT_SID, AUTH_TOKEN, Database, business, business_number


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.profile_webhook", description=__doc__.split("\n")[0])
    p.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    p.add_argument("--calls", type=int, default=300)
    p.add_argument("--status", action="store_true", help="profile message status callbacks instead")
    p.add_argument("--rounds", type=int, default=5, help="split the timed webhooks into this many rounds")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--dump", help="also write the cProfile stats to this file (for pstats/snakeviz)")
    p.add_argument("--sort", default="cumulative", help="pstats sort key: cumulative, tottime, ...")
    p.add_argument("--log-level", default="INFO", help="logging.level in the config (INFO is the default)")
    args = p.parse_args()
    if not 10 <= args.calls <= 5000:
        p.error("--calls must be 10..5000")
    if not 1 <= args.rounds <= args.calls // 2:
        p.error("--rounds must be 1..calls/2")
    workdir = Path(tempfile.mkdtemp(prefix="textback-profile-"))
    db = Database(args.db, workdir)
    db.create()
    try:
        run(args, workdir, db)
    finally:
        db.drop()
        shutil.rmtree(workdir, ignore_errors=True)


def run(args: argparse.Namespace, workdir: Path, db: Database) -> None:
    public_url = "http://127.0.0.1:9"
    config = {
        "database_url": db.url,
        "public_url": public_url,
        "twilio": {"account_sid": ACCOUNT_SID, "auth_token": AUTH_TOKEN},
        "logging": {"level": args.log_level},
        "businesses": [business(0, "forward")],
    }
    path = workdir / "textback.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    subprocess.run([sys.executable, "-m", "bridge.cli", "db", "upgrade", "--config", str(path)],
                   check=True, capture_output=True)  # fmt: skip
    from sqlalchemy import event

    from bridge.app import create_app
    from core import config as config_mod
    from core import logs

    cfg = config_mod.load(str(path))
    logs.setup(cfg.log_level)
    for handler in logging.getLogger().handlers:  # the log lines are produced, then dropped
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(open("/dev/null", "w"))
    app = create_app(cfg)
    engine = app.extensions["textback"].engine
    statements = [0]
    event.listen(
        engine, "before_cursor_execute", lambda *a, **k: statements.__setitem__(0, statements[0] + 1)
    )
    client = app.test_client()
    signer = Signer(public_url, AUTH_TOKEN, ACCOUNT_SID)
    calls = [signer.call(i, business_number(0), "forward").requests[0] for i in range(args.calls + 50)]
    route = "webhook"

    def send(batch: list) -> None:
        for req in batch:
            r = client.post(req.path, data=req.body, headers={"X-Twilio-Signature": req.signature,
                            "Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
            if r.status_code not in (200, 204):
                raise SystemExit(f"webhook answered {r.status_code}: {r.get_data(as_text=True)[:200]}")

    send(calls[:50])  # warm: connections, caches
    measured = calls[50:]
    if args.status:
        send(calls[50 : 50 + args.calls // 2])
        route = "status callback"
        callbacks = status_callbacks(engine, signer)
        send(callbacks[:50])
        measured = callbacks[50 : 50 + args.calls]
    statements[0] = 0
    timed = measured[: args.calls // 2]
    # In rounds: on a shared machine the quietest round (the least CPU) is the closest to the cost.
    rounds = [timed[i :: args.rounds] for i in range(args.rounds)]
    wall, cpu, cpus = time.perf_counter(), time.process_time(), []
    for batch in rounds:
        started = time.process_time()
        send(batch)
        cpus.append((time.process_time() - started) / len(batch))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    per_call_statements = statements[0] / (args.calls // 2)
    profiler = cProfile.Profile()
    profiler.enable()
    send(measured[args.calls // 2 :])
    profiler.disable()
    if args.dump:
        profiler.dump_stats(args.dump)
    n = args.calls // 2
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    # Python function calls per webhook: unlike the clock, it does not move with the machine's load.
    calls_per_webhook = stats.total_calls / (len(measured) - n)  # type: ignore[attr-defined]
    print(
        f"db={args.db} {route}s={n}: wall {wall / n * 1000:.2f} ms/{route}, CPU {cpu / n * 1000:.2f} "
        f"ms/{route} (this process; quietest of {args.rounds} rounds {min(cpus) * 1000:.2f}, median "
        f"{statistics.median(cpus) * 1000:.2f}), {per_call_statements:.1f} SQL statements/{route}, "
        f"{calls_per_webhook:.0f} Python function calls/{route}"
    )
    stats.sort_stats(args.sort).print_stats(args.top)
    print(out.getvalue())


def status_callbacks(engine: Any, signer: Signer) -> list[Request]:
    """``sent`` then ``delivered`` for every text stored so far, each given a sid as the worker would."""
    from sqlalchemy import text

    with engine.begin() as conn:
        ids = [r[0] for r in conn.execute(text("SELECT id FROM messages ORDER BY created_at, id"))]
        for i, message_id in enumerate(ids):
            conn.execute(
                text("UPDATE messages SET sid = :sid, status = 'queued' WHERE id = :id"),
                {"sid": f"SM{i:032x}", "id": message_id},
            )
    requests = []
    for i, message_id in enumerate(ids):
        for status in ("sent", "delivered"):
            params = {
                "MessageSid": f"SM{i:032x}",
                "MessageStatus": status,
                "SmsStatus": status,
                "AccountSid": signer.account_sid,
                "To": "+13125550100",
                "From": business_number(0),
                "ApiVersion": "2010-04-01",
            }
            requests.append(signer.request(f"/twilio/message-status?m={message_id}", params))
    return requests


if __name__ == "__main__":
    main()
