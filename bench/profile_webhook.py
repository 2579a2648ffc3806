"""Where a missed-call webhook's time goes, in process (no network, no other process competing).

    python -m bench.profile_webhook --db sqlite|postgres [--calls 300] [--top 25] [--sort tottime]

Builds the bridge app on a fresh database (like ``textback serve`` does), sends ``--calls`` signed
forward-mode ``/twilio/voice`` webhooks through Flask's test client, and prints the wall and CPU
time per webhook, the SQL statements per webhook, and the cProfile functions with the most
cumulative time. Bounded by ``--calls``; figures only, no assertions.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import logging
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench.load import Signer
from bench.stack import ACCOUNT_SID, AUTH_TOKEN, Database, business, business_number


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.profile_webhook", description=__doc__.split("\n")[0])
    p.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    p.add_argument("--calls", type=int, default=300)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--dump", help="also write the cProfile stats to this file (for pstats/snakeviz)")
    p.add_argument("--sort", default="cumulative", help="pstats sort key: cumulative, tottime, ...")
    p.add_argument("--log-level", default="INFO", help="logging.level in the config (INFO is the default)")
    args = p.parse_args()
    if not 10 <= args.calls <= 5000:
        p.error("--calls must be 10..5000")
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

    def send(batch: list) -> None:
        for req in batch:
            r = client.post(req.path, data=req.body, headers={"X-Twilio-Signature": req.signature,
                            "Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
            if r.status_code != 200:
                raise SystemExit(f"webhook answered {r.status_code}: {r.get_data(as_text=True)[:200]}")

    send(calls[:50])  # warm: connections, caches
    measured = calls[50:]
    statements[0] = 0
    wall, cpu = time.perf_counter(), time.process_time()
    send(measured[: args.calls // 2])
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
        f"db={args.db} calls={n}: wall {wall / n * 1000:.2f} ms/webhook, CPU {cpu / n * 1000:.2f} ms/webhook "
        f"(this process), {per_call_statements:.1f} SQL statements/webhook, "
        f"{calls_per_webhook:.0f} Python function calls/webhook"
    )
    stats.sort_stats(args.sort).print_stats(args.top)
    print(out.getvalue())


if __name__ == "__main__":
    main()
