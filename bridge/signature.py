"""X-Twilio-Signature checks against the URL Twilio actually requested.

Behind a TLS-terminating proxy the app sees ``http://internal:8000/...`` while Twilio signed
``https://public.example/...``, so with ``public_url`` set the URL is rebuilt from it plus the raw
path and query as received. Both the primary and (during rotation) the secondary auth token are
accepted. twilio's RequestValidator already tries the URL with and without an explicit port.
"""

from __future__ import annotations

from flask import Request
from twilio.request_validator import RequestValidator


def signed_url(request: Request, public_url: str | None) -> str:
    raw = request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI")
    if not raw:
        raw = request.full_path if request.query_string else request.path
    if raw.startswith(("http://", "https://")):
        # An absolute-form request target: keep only path and query.
        raw = "/" + raw.split("/", 3)[3] if raw.count("/") >= 3 else "/"
    raw = raw.split("#", 1)[0]
    if public_url:
        return public_url.rstrip("/") + raw
    return request.host_url.rstrip("/") + raw


def is_valid(request: Request, tokens: list[str], public_url: str | None) -> bool:
    signature = request.headers.get("X-Twilio-Signature", "")
    if not signature or not tokens:
        return False
    try:
        url = signed_url(request, public_url)
        if request.mimetype == "application/json":
            # Twilio signs a JSON body through a bodySHA256 query parameter; without one the body
            # would be covered by nothing (and RequestValidator cannot take it as parameters).
            if "bodySHA256" not in request.args:
                return False
            body = request.get_data(as_text=True)
            return any(RequestValidator(t).validate(url, body, signature) for t in tokens)
        # Every field the views can read (urlencoded or multipart) must be covered by the signature.
        return any(RequestValidator(t).validate(url, request.form, signature) for t in tokens)
    except ValueError:
        return False  # e.g. a Host header whose port is out of range: not a URL Twilio signed
