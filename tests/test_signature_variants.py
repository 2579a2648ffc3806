"""``bridge.signature.is_valid`` signs the form once and tries the likely URL first; it must accept
exactly what twilio's RequestValidator accepts, for every URL variant, token and parameter shape."""

from __future__ import annotations

from urllib.parse import urlencode

from flask import Flask
from hypothesis import given, settings
from hypothesis import strategies as st
from twilio.request_validator import RequestValidator

from bridge import signature

PRIMARY, SECONDARY = "primary-token-0123456789abcdef", "secondary-token-fedcba9876543210"
HOSTS = ("textback.example.com", "textback.example.com:443", "textback.example.com:8443", "127.0.0.1:8000")
SCHEMES = ("https", "http")
PATHS = ("/twilio/voice", "/twilio/message-status?m=0f8fad5b-d9cb-4", "/twilio/sms?a=1&a=2")
names = st.sampled_from(["From", "To", "Body", "StirVerstat", "From+1312", "MessageStatus", "Ä"])
values = st.text(alphabet="ab+1 é&=%", max_size=6)

app = Flask("signature-test")


def reference(url: str, pairs: list[tuple[str, str]], sig: str, tokens: list[str]) -> bool:
    from werkzeug.datastructures import MultiDict

    return any(RequestValidator(t).validate(url, MultiDict(pairs), sig) for t in tokens)


@settings(max_examples=400, deadline=None)
@given(
    scheme=st.sampled_from(SCHEMES),
    host=st.sampled_from(HOSTS),
    path=st.sampled_from(PATHS),
    pairs=st.lists(st.tuples(names, values), max_size=6),
    signed_scheme=st.sampled_from(SCHEMES),
    signed_host=st.sampled_from(HOSTS),
    signing_token=st.sampled_from([PRIMARY, SECONDARY, "a-third-token"]),
    tokens=st.sampled_from([[PRIMARY], [PRIMARY, SECONDARY]]),
    public=st.booleans(),
    garbage=st.sampled_from(["", "not-a-signature", "é"]),
)
def test_accepts_exactly_what_the_validator_accepts(
    scheme: str,
    host: str,
    path: str,
    pairs: list[tuple[str, str]],
    signed_scheme: str,
    signed_host: str,
    signing_token: str,
    tokens: list[str],
    public: bool,
    garbage: str,
) -> None:
    from werkzeug.datastructures import MultiDict

    public_url = f"{scheme}://{host}" if public else None
    sig = garbage or RequestValidator(signing_token).compute_signature(
        f"{signed_scheme}://{signed_host}{path}", MultiDict(pairs)
    )
    with app.test_request_context(
        path,
        method="POST",
        base_url=f"{scheme}://{host}",
        data=urlencode(pairs),
        content_type="application/x-www-form-urlencoded",
        headers={"X-Twilio-Signature": sig},
    ) as ctx:
        url = signature.signed_url(ctx.request, public_url)
        assert signature.is_valid(ctx.request, tokens, public_url) == reference(url, pairs, sig, tokens)


def test_each_legitimate_variant_is_accepted() -> None:
    pairs = [("From", "+13125550142"), ("StirVerstat", "B"), ("StirVerstat", "A"), ("From", "+13125550142")]
    path = "/twilio/voice"
    for signed_for in ("https://textback.example.com", "https://textback.example.com:443"):
        for token in (PRIMARY, SECONDARY):
            from werkzeug.datastructures import MultiDict

            sig = RequestValidator(token).compute_signature(signed_for + path, MultiDict(pairs))
            with app.test_request_context(
                path,
                method="POST",
                base_url="http://internal:8000",
                data=urlencode(pairs),
                content_type="application/x-www-form-urlencoded",
                headers={"X-Twilio-Signature": sig},
            ) as ctx:
                assert signature.is_valid(ctx.request, [PRIMARY, SECONDARY], "https://textback.example.com")
                assert not signature.is_valid(ctx.request, [PRIMARY, SECONDARY], None)  # the internal URL
                assert not signature.is_valid(ctx.request, ["a-third-token"], "https://textback.example.com")
