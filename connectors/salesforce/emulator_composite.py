"""``POST /services/data/vXX.X/composite``: up to 25 subrequests with ``@{ref.path}`` references.

The top-level answer is always HTTP 200; each subrequest carries its own status. With ``allOrNone``
the first failure rolls everything back and every other subrequest reports PROCESSING_HALTED.
Without it, only subrequests that reference a failed one are skipped.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from connectors.salesforce.emulator_store import SfError, Store, bad_request, error

MAX_SUBREQUESTS = 25
_REF = re.compile(r"@\{([A-Za-z][A-Za-z0-9_]*)((?:\.[A-Za-z0-9_]+|\[\d+\])*)\}")
_REF_ID = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_ROLLED_BACK = "The transaction was rolled back since another operation in the same transaction failed."
Dispatch = Callable[[str, list[str], dict[str, str], Any], tuple[int, Any, dict[str, str]]]


class _Unresolved(Exception):
    pass


def _resolve_path(results: dict[str, Any], ref: str, path: str) -> Any:
    if ref not in results:
        raise _Unresolved(f"Invalid reference specified. No value for {ref}{path} found in {ref}. "
                          f"Provided referenceId ('{ref}') doesn't match a successful earlier subrequest.")
    value = results[ref]
    for step in re.findall(r"\.([A-Za-z0-9_]+)|\[(\d+)\]", path):
        key, index = step
        try:
            value = value[key] if key else value[int(index)]
        except (KeyError, IndexError, TypeError):
            message = f"Invalid reference specified. No value for {ref}{path} found in {ref}."
            raise _Unresolved(message) from None
    return value


def _substitute(value: Any, results: dict[str, Any]) -> Any:
    if isinstance(value, str):
        whole = _REF.fullmatch(value)
        if whole:
            return _resolve_path(results, whole.group(1), whole.group(2))  # keeps the JSON type
        return _REF.sub(lambda m: str(_resolve_path(results, m.group(1), m.group(2))), value)
    if isinstance(value, dict):
        return {k: _substitute(v, results) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, results) for v in value]
    return value


def _check(body: Any) -> list[dict[str, Any]]:
    if not isinstance(body, dict) or not isinstance(body.get("compositeRequest"), list):
        raise bad_request("JSON_PARSER_ERROR", "compositeRequest is required and must be a list")
    subs = body["compositeRequest"]
    if not subs:
        raise bad_request("INVALID_INPUT", "The composite request must contain at least one subrequest.")
    if len(subs) > MAX_SUBREQUESTS:
        raise bad_request("LIMIT_EXCEEDED", f"Composite requests can't have more than {MAX_SUBREQUESTS} "
                          "subrequests.")
    seen: set[str] = set()
    for sub in subs:
        if not isinstance(sub, dict):
            raise bad_request("JSON_PARSER_ERROR", "Each subrequest must be a JSON object")
        ref, method, url = sub.get("referenceId"), sub.get("method"), sub.get("url")
        if not isinstance(ref, str) or not _REF_ID.match(ref):
            raise bad_request("INVALID_INPUT", f"Invalid referenceId: {ref}")
        if ref in seen:
            raise bad_request("INVALID_INPUT", f"Duplicate referenceId provided in the request: {ref}")
        seen.add(ref)
        if method not in ("GET", "POST", "PATCH", "PUT", "DELETE", "HEAD"):
            raise bad_request("INVALID_INPUT", f"Invalid method for subrequest {ref}: {method}")
        if not isinstance(url, str) or not url.startswith("/services/data/"):
            raise bad_request("INVALID_INPUT", f"The url of subrequest {ref} must start with /services/data")
    return list(subs)


def _entry(status: int, body: Any, headers: dict[str, str], ref: str) -> dict[str, Any]:
    return {"body": body, "httpHeaders": headers, "httpStatusCode": status, "referenceId": ref}


def run_composite(store: Store, body: Any, dispatch: Dispatch) -> dict[str, Any]:
    subs = _check(body)
    all_or_none = bool(body.get("allOrNone"))
    snapshot = store.snapshot() if all_or_none else None
    results: dict[str, Any] = {}
    out: list[dict[str, Any]] = []
    for sub in subs:
        ref = sub["referenceId"]
        try:
            url = _substitute(sub["url"], results)
            payload = _substitute(sub["body"], results) if "body" in sub else None
        except _Unresolved as exc:
            out.append(_entry(400, [error("PROCESSING_HALTED", str(exc))], {}, ref))
            if all_or_none:
                break
            continue
        parts = urlsplit(url)
        segments = [unquote(s) for s in parts.path[len("/services/data/"):].split("/") if s]
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        try:
            status, answer, headers = dispatch(sub["method"], segments, query, payload)
        except SfError as exc:
            status, answer, headers = exc.status, exc.body, {}
        out.append(_entry(status, answer, {k: v for k, v in headers.items() if k == "Location"}, ref))
        if status < 300:
            results[ref] = answer
        elif all_or_none:
            break
    failed = any(e["httpStatusCode"] >= 300 for e in out)
    if all_or_none and failed and snapshot is not None:
        store.restore(snapshot)
        halted = [error("PROCESSING_HALTED", _ROLLED_BACK)]
        done = {e["referenceId"] for e in out}
        out = [e if e["httpStatusCode"] >= 300 else _entry(400, halted, {}, e["referenceId"]) for e in out]
        out += [_entry(400, halted, {}, s["referenceId"]) for s in subs if s["referenceId"] not in done]
    return {"compositeResponse": out}
