"""Turning load results and emulator request logs into the figures in docs/benchmarks.md.

Percentiles are nearest-rank over every call of a phase. A call that never got its answer (or
its text, or its CRM records) counts as infinitely slow, so a percentile is never flattered by
leaving failures out: it is reported as None ("not reached") when too many are missing.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl

from bench.load import Result

INF = float("inf")
PHONE = re.compile(r"\+1\d{10}")


def pct(values: Iterable[float], q: float) -> float | None:
    data = sorted(values)
    if not data:
        return None
    rank = max(1, math.ceil(q / 100 * len(data)))
    value = data[rank - 1]
    return None if math.isinf(value) else value


def ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 2)


def _latency_block(values: list[float], qs: tuple[float, ...]) -> dict[str, Any]:
    block: dict[str, Any] = {"n": len(values), "missing": sum(1 for v in values if math.isinf(v))}
    for q in qs:
        block[f"p{q:g}_ms"] = ms(pct(values, q))
    finite = [v for v in values if not math.isinf(v)]
    block["max_ms"] = ms(max(finite)) if finite else None
    return block


def webhook_summary(results: list[Result]) -> dict[str, Any]:
    """Answer latency of every webhook sent (send to complete answer), per route and overall."""
    per_route: dict[str, list[float]] = defaultdict(list)
    statuses: Counter[str] = Counter()
    for r in results:
        for path, seconds, status in r.latencies:
            failed = status != 200
            per_route[path].append(INF if failed else seconds)
            statuses[str(status)] += 1
    everything = [v for vals in per_route.values() for v in vals]
    lag = [max(0.0, r.sent - r.scheduled) for r in results if r.sent]
    out = _latency_block(everything, (50, 99, 99.9))
    out["routes"] = {p: _latency_block(v, (50, 99, 99.9)) for p, v in sorted(per_route.items())}
    out["statuses"] = dict(statuses)
    out["calls"] = len(results)
    out["calls_failed"] = sum(1 for r in results if r.error)
    out["send_lag_p99_ms"] = ms(pct(lag, 99))
    out["send_lag_max_ms"] = ms(max(lag)) if lag else None
    return out


def sms_requests(twilio_log: list[dict[str, Any]]) -> dict[str, float]:
    """First ``POST .../Messages.json`` per To number, at the emulator's own clock."""
    first: dict[str, float] = {}
    for entry in twilio_log:
        if entry["method"] != "POST" or not entry["path"].endswith("/Messages.json"):
            continue
        to = ((entry.get("form") or {}).get("To") or [""])[0]
        if to and (to not in first or entry["at"] < first[to]):
            first[to] = float(entry["at"])
    return first


def sms_summary(results: list[Result], sent_at: dict[str, float]) -> dict[str, Any]:
    """Missed call (the concluding webhook was sent) to the SMS request arriving at Twilio."""
    values = []
    for r in results:
        at = sent_at.get(r.caller)
        values.append(INF if at is None or not r.missed_at or r.error else max(0.0, at - r.missed_at))
    return _latency_block(values, (50, 99))


def sms_by_second(results: list[Result], sent_at: dict[str, float]) -> list[list[float | None]]:
    """Per second of the step: [second, calls, SMS p50 ms, SMS max ms], to see when a tail happens."""
    start = min((r.missed_at for r in results if r.missed_at), default=0.0)
    buckets: dict[int, list[float]] = {}
    for r in results:
        if not r.missed_at:
            continue
        at = sent_at.get(r.caller)
        value = INF if at is None or r.error else max(0.0, at - r.missed_at)
        buckets.setdefault(int(r.missed_at - start), []).append(value)
    return [
        [second, len(values), ms(pct(values, 50)), ms(pct(values, 100))]
        for second, values in sorted(buckets.items())
    ]


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, bool) or value is None:
        return
    elif isinstance(value, int | float):
        yield str(value)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


class CrmLog:
    """A CRM emulator's request log, attributed to leads (by caller phone).

    A request belongs to a lead when it carries the lead's phone number, or the id of the lead's
    contact (HubSpot) or person (Pipedrive: in a ``/persons/<id>`` path or a ``person_id``), in
    its path, query, form or JSON body. Requests that belong to no lead (schema and pipeline
    checks) are counted apart.
    """

    def __init__(self, connector: str, log: list[dict[str, Any]], state: dict[str, Any], phones: set[str]):
        self.connector = connector
        self.by_phone: dict[str, list[float]] = defaultdict(list)
        self.unattributed: list[dict[str, Any]] = []
        self.statuses: Counter[str] = Counter()
        ids: dict[str, str] = {}
        for contact in state.get("contacts", []) if connector == "hubspot" else []:
            props = contact.get("properties") or {}
            phone = props.get("textback_phone_e164") or props.get("phone")
            if phone in phones:
                ids[str(contact["id"])] = phone
        persons: dict[str, str] = {}
        for person in state.get("persons", []) if connector == "pipedrive" else []:
            for number in person.get("phones") or []:
                if number.get("value") in phones:
                    persons[str(person["id"])] = number["value"]
        for entry in log:
            phone = self._owner(entry, phones, ids) or _person_owner(entry, persons)
            if phone is None:
                self.unattributed.append(entry)
            else:
                self.by_phone[phone].append(float(entry["at"]))

    @staticmethod
    def _owner(entry: dict[str, Any], phones: set[str], ids: dict[str, str]) -> str | None:
        query = entry.get("query") or ""
        tokens = [*entry["path"].split("/"), query, *(v for _, v in parse_qsl(query))]
        tokens.extend(_strings(entry.get("form")))
        tokens.extend(_strings(entry.get("json")))
        for token in tokens:
            if token in phones:
                return token
        for token in tokens:
            if token in ids:
                return ids[token]
        # A phone inside a longer string (a note's body, a webhook's payload).
        blob = (
            json.dumps([entry.get("json"), entry.get("form")])
            if entry.get("json") or entry.get("form")
            else ""
        )
        for phone in PHONE.findall(blob):
            if phone in phones:
                return str(phone)
        return None

    def calls_per_lead(self, complete: set[str]) -> dict[str, Any]:
        counts = [len(self.by_phone.get(p, [])) for p in complete]
        if not counts:
            return {"leads": 0}
        return {
            "leads": len(counts),
            "mean": round(sum(counts) / len(counts), 2),
            "min": min(counts),
            "max": max(counts),
            "histogram": dict(sorted(Counter(counts).items())),
            "unattributed_calls": len(self.unattributed),
        }

    def completion_summary(self, results: list[Result], complete: set[str]) -> dict[str, Any]:
        """Missed call to the lead's last CRM request, for leads whose CRM jobs all finished."""
        values = []
        for r in results:
            ats = self.by_phone.get(r.caller)
            if r.caller not in complete or not ats or not r.missed_at:
                values.append(INF)
            else:
                values.append(max(0.0, max(ats) - r.missed_at))
        block = _latency_block(values, (50, 99))
        block["complete"] = sum(1 for v in values if not math.isinf(v))
        return block


def complete_leads(lead_jobs: dict[str, dict[str, Any]], connector: str) -> set[str]:
    """Phones whose crm.sync jobs for ``connector`` are all done, the 'texted' one included."""
    done = set()
    for phone, per_connector in lead_jobs.items():
        jobs = per_connector.get(connector) or []
        events = {e for e, _ in jobs}
        if jobs and all(s == "done" for _, s in jobs) and {"missed_call", "texted"} <= events:
            done.add(phone)
    return done


def _person_owner(entry: dict[str, Any], persons: dict[str, str]) -> str | None:
    """Pipedrive: the phone of the person a request names by id. Ids are small numbers that deals
    and users share, so only a ``/persons/<id>`` path and a ``person_id`` field count."""
    if not persons:
        return None
    parts = entry["path"].split("/")
    for i, part in enumerate(parts[:-1]):
        if part == "persons" and parts[i + 1] in persons:
            return persons[parts[i + 1]]
    body = entry.get("json")
    if isinstance(body, dict) and str(body.get("person_id")) in persons:
        return persons[str(body["person_id"])]
    return None


def rss_summary(rss: dict[str, list[dict[str, int]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for role, procs in rss.items():
        peaks = [p.get("VmHWM", 0) for p in procs if p.get("VmHWM")]
        out[role] = {
            "count": len(procs),
            "peak_mb_max": round(max(peaks) / 1024, 1) if peaks else None,
            "peak_mb_each": [round(p / 1024, 1) for p in peaks],
        }
    return out


def ratio(ours: float | None, naive: float | None) -> float | None:
    """ours / naive; None when either is missing (a naive p99 that timed out is not a number)."""
    if ours is None or naive is None or naive == 0:
        return None
    return round(ours / naive, 4)


def trend(results: list[Result], sent_at: dict[str, float]) -> dict[str, Any]:
    """Median webhook and SMS latency of the first and the last quarter of a step's calls.

    A system that keeps up answers the last calls of a step as fast as the first ones; a queue
    that grows (a backlog of requests or of jobs) shows as a last quarter much slower than the first.
    """
    ordered = sorted(results, key=lambda r: r.scheduled)
    q = max(1, len(ordered) // 4)

    def web(rs: list[Result]) -> float | None:
        return pct(
            [INF if not r.latencies or r.latencies[0][2] != 200 else r.latencies[0][1] for r in rs], 50
        )

    def sms(rs: list[Result]) -> float | None:
        vals = []
        for r in rs:
            at = sent_at.get(r.caller)
            vals.append(INF if at is None or not r.missed_at or r.error else max(0.0, at - r.missed_at))
        return pct(vals, 50)

    first, last = ordered[:q], ordered[-q:]
    return {
        "web_p50_first_ms": ms(web(first)),
        "web_p50_last_ms": ms(web(last)),
        "sms_p50_first_ms": ms(sms(first)),
        "sms_p50_last_ms": ms(sms(last)),
    }


def keeps_up(entry: dict[str, Any]) -> bool:
    """Every call answered and texted, and the last quarter no slower than the first (plus slack)."""
    t = entry.get("trend") or {}
    web, sms = entry["webhooks"], entry["sms"]
    if entry.get("sms_drain_s") == 0.0 and sms["missing"] == entry["calls"]:  # the bridge alone
        first, last = t.get("web_p50_first_ms"), t.get("web_p50_last_ms")
        return bool(
            not web["calls_failed"] and first is not None and last is not None and last <= 1.5 * first + 50
        )
    if web["calls_failed"] or sms["missing"] or not entry.get("sms_drained", True):
        return False
    values = [
        t.get(k) for k in ("web_p50_first_ms", "web_p50_last_ms", "sms_p50_first_ms", "sms_p50_last_ms")
    ]
    if any(v is None for v in values):
        return False
    wf, wl, sf, sl = (float(v) for v in values)  # type: ignore[arg-type]
    return wl <= 1.5 * wf + 50 and sl <= 1.5 * sf + 250
