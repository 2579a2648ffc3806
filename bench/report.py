"""Markdown tables from a ``bench.run --out`` JSON file: ``python -m bench.report FILE [FILE ...]``.

The tables in docs/benchmarks.md are printed by this, so no figure is copied by hand.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def f(v: Any, unit: str = "") -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        text = f"{v:,.0f}" if abs(v) >= 100 else f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"
        return text + unit
    return f"{v}{unit}"


def row(cells: list[Any]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def cell_name(c: dict[str, Any]) -> str:
    if c["system"] == "naive":
        return f"naive, {c['bridge_workers']} w"
    return f"{c['db']}, {c['bridge_workers']} w"


def phase_label(name: str, rate: float) -> str:
    if name == "crm":
        return f"CRM phase @ {rate:g}"
    if name == "crm-burst":
        return f"CRM burst @ {rate:g}"
    return f"{rate:g}"


def phases_table(cells: list[dict[str, Any]]) -> list[str]:
    out = [
        row(["cell", "phase (calls/s)", "calls", "webhook p50", "p99", "p99.9", "failed",
             "SMS p50", "SMS p99", "no SMS", "CRM p50", "CRM p99", "CRM synced", "outside CPU"]),
        row(["---"] * 14),
    ]  # fmt: skip
    for c in cells:
        for name, e in c["phases"].items():
            w, s = e["webhooks"], e["sms"]
            crm = next(iter(e["crm"].values()), {})
            label = phase_label(name, e["rate"])
            out.append(row([
                cell_name(c), label, e["calls"], f(w["p50_ms"], " ms"), f(w["p99_ms"], " ms"),
                f(w["p99.9_ms"], " ms"), w["calls_failed"], f(s["p50_ms"], " ms"), f(s["p99_ms"], " ms"),
                s["missing"], f(crm.get("p50_ms"), " ms"), f(crm.get("p99_ms"), " ms"),
                f"{crm.get('complete', 0)}/{e['calls']}" if crm else "-",
                f(e.get("cpu", {}).get("outside_pct"), " %"),
            ]))  # fmt: skip
    return out


def summary_table(cells: list[dict[str, Any]]) -> list[str]:
    out = [
        row(["cell", "sustained (goals)", "keeps up", "bridge worker RSS", "outbox worker RSS",
             "bridge master RSS", "HubSpot calls/lead alone", "HubSpot calls/lead queued", "setup",
             "wall"]),
        row(["---"] * 10),
    ]  # fmt: skip
    from bench.run import sustained

    for c in cells:
        c["sustained"] = sustained(c)  # recomputed, so every file is judged by the same rules
        rss = c["rss"]
        calls = [per_lead(c, "crm"), per_lead(c, "crm-burst")]
        out.append(row([
            cell_name(c), f"{c['sustained']['within_goals']:g}/s", f"{c['sustained']['keeps_up']:g}/s",
            f((rss.get("bridge worker") or {}).get("peak_mb_max"), " MB"),
            f((rss.get("outbox worker") or {}).get("peak_mb_max"), " MB"),
            f((rss.get("bridge master") or {}).get("peak_mb_max"), " MB"), *calls,
            f(c.get("setup_s"), " s"), f(c.get("wall_s"), " s"),
        ]))  # fmt: skip
    return out


def per_lead(c: dict[str, Any], phase: str) -> str:
    cpl = (c["phases"].get(phase) or {}).get("crm", {}).get("hubspot", {}).get("calls_per_lead", {})
    return f"{cpl['mean']} (max {cpl['max']}, {cpl['leads']} leads)" if cpl.get("leads") else "n/a"


def cpu_table(cells: list[dict[str, Any]]) -> list[str]:
    roles = [
        "bridge",
        "outbox workers",
        "postgres (all)",
        "twilio-emulator",
        "hubspot-emulator",
        "load generator",
    ]
    out = [
        row(["cell", "phase", *[f"{r} ms/call" for r in roles], "machine busy"]),
        row(["---"] * (len(roles) + 3)),
    ]
    for c in cells:
        for name, e in c["phases"].items():
            per = e.get("cpu", {}).get("cpu_ms_per_call", {})
            cells_ = [f(per.get(r)) for r in roles]
            label = phase_label(name, e["rate"])
            out.append(row([cell_name(c), label, *cells_, f(e.get("cpu", {}).get("machine_busy_pct"), " %")]))
    return out


def ratios_table(report: dict[str, Any]) -> list[str]:
    out = [row(["cell", "phase", "webhook p99", "SMS p99", "CRM p99", "naive failed", "naive CRM synced"]),
           row(["---"] * 7)]  # fmt: skip
    for r in report.get("ratios", []):
        name = f"{r['db']}, {r['bridge_workers']} w"
        for phase, v in r.items():
            if isinstance(v, dict):
                ratios = [f(v["webhook_p99"], "x"), f(v["sms_p99"], "x"), f(v["crm_p99"], "x")]
                out.append(row([name, phase, *ratios, v["naive_calls_failed"], v["naive_crm_synced"]]))
        out.append(row([name, "sustained (keeps up)", f(r.get("sustained_keeps_up"), "x"), "", "", "", ""]))
        out.append(row([name, "bridge worker RSS", f(r.get("bridge_worker_rss"), "x"), "", "", "", ""]))
    return out


def verdicts_table(cells: list[dict[str, Any]]) -> list[str]:
    keys: list[str] = []
    for c in cells:
        for k in c.get("verdicts", {}):
            if k not in keys:
                keys.append(k)
    out = [row(["cell", *keys]), row(["---"] * (len(keys) + 1))]
    for c in cells:
        v = c.get("verdicts", {})
        out.append(row([cell_name(c), *[
            (("met " if v[k]["met"] else "**not met** ") + f(v[k]["value"])) if k in v else "-" for k in keys
        ]]))  # fmt: skip
    return out


def render(path: Path) -> str:
    report = json.loads(path.read_text(encoding="utf-8"))
    m = report["machine"]
    cells = report.get("naive", []) + report.get("cells", [])
    lines = [
        f"### {path.name}",
        "",
        f"`{report['command']}`",
        "",
        f"{m['nproc']} CPUs ({m['cpu']}), {m['memory_gb']} GB; wall time {report['wall_s']} s"
        + (
            f"; calibration {m['calibration_ms']} ms at the start, "
            f"{report.get('calibration_end_ms')} ms at the end"
            if "calibration_ms" in m
            else ""
        ),
        "",
        *phases_table(cells),
        "",
        *summary_table(cells),
        "",
        *cpu_table(cells),
    ]
    if report.get("cells"):
        lines += ["", *verdicts_table(report["cells"])]
    if report.get("ratios"):
        lines += ["", *ratios_table(report)]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.split("\n")[0])
    p.add_argument("files", nargs="+", type=Path)
    for path in p.parse_args().files:
        print(render(path))


if __name__ == "__main__":
    main()
