"""X-Twilio-Signature checks against the URL Twilio actually requested.

Behind a TLS-terminating proxy the app sees ``http://internal:8000/...`` while Twilio signed
``https://public.example/...``, so with ``public_url`` set the URL is rebuilt from it plus the raw
path and query as received. Both the primary and (during rotation) the secondary auth token are
accepted. Like twilio's RequestValidator, the URL is tried with and without an explicit port.
"""

from __future__ import annotations

import base64
import functools
import hmac
from urllib.parse import urlparse

from flask import Request
from twilio.request_validator import RequestValidator, add_port, remove_port
from werkzeug.datastructures import MultiDict


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
        return _form_signed(url, request.form, signature, tokens)
    except ValueError:
        return False  # e.g. a Host header whose port is out of range: not a URL Twilio signed


def _form_signed(url: str, form: MultiDict[str, str], signature: str, tokens: list[str]) -> bool:
    """RequestValidator.validate's answer for a form, for any of ``tokens``.

    It signs the parameters anew for every URL variant and token and always computes both
    variants; the parameters' part is built once here, and the likely URL is tried first.
    """
    # Every value of every name, names and values sorted, duplicates once (as Twilio signs them).
    params = "".join(name + value for name in sorted(set(form)) for value in sorted(set(form.getlist(name))))
    expected = signature.encode()
    keys = [token.encode() for token in tokens]
    for candidate in _variants(url):
        message = (candidate + params).encode()
        for key in keys:
            computed = base64.b64encode(hmac.digest(key, message, "sha1"))
            if hmac.compare_digest(computed, expected):
                return True
    return False


# A voice webhook's URL is the same for every call, a status callback's differs only in its query:
# parsing it and rebuilding both variants once per URL is enough.
@functools.lru_cache(maxsize=1024)
def _variants(url: str) -> tuple[str, str]:
    """The URL as requested first (Twilio signs what it requested), then with the port toggled."""
    parsed = urlparse(url)
    if parsed.port:
        return add_port(parsed), remove_port(parsed)
    return remove_port(parsed), add_port(parsed)
