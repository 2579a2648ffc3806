"""A seeded mutator of signed Twilio webhooks, for the signature fault test (item 7).

Every mutation changes something the signature covers (the URL Twilio requested, a parameter's
name or value, the set of parameters, the token, the signature itself) or the body's meaning, and
it says so with an independent oracle (``parse_qsl``, not the bridge's code): a mutation that
leaves the signed content as it was is drawn again. The signed content is Twilio's: the URL, then
every name followed by its values, sorted, with no separator. So ``From=%2B1312...`` and
``From%2B1312...`` (a name ``From+1312...`` with an empty value) sign the same string, as do
``...&Text=Please`` and ``...&Text=Ple&ase`` when ``ase`` sorts last: those are not forgeries but
the same signed request, parsed differently (see test_7c).
"""

from __future__ import annotations

import base64
import random
import string
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode

from twilio.request_validator import RequestValidator

ROUTES = (
    "/twilio/voice",
    "/twilio/screen",
    "/twilio/screen-accept",
    "/twilio/dial-result",
    "/twilio/call-status",
    "/twilio/recording",
    "/twilio/transcription",
    "/twilio/sms",
    "/twilio/message-status",
)
KINDS = (
    "value",
    "name",
    "extra",
    "missing",
    "path",
    "query",
    "scheme",
    "host",
    "port",
    "token",
    "body",
    "signature",
    "content_type",
)


@dataclass(frozen=True)
class Signed:
    """One legitimate request: its path (with query), its form pairs, and who signed it."""

    path: str
    pairs: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Mutant:
    kind: str
    path: str
    body: bytes
    content_type: str
    headers: dict[str, str]


def meaning(pairs: list[tuple[str, str]] | tuple[tuple[str, str], ...]) -> dict[str, frozenset[str]]:
    """What Twilio's signature covers of the parameters: each name with its set of values."""
    out: dict[str, set[str]] = {}
    for k, v in pairs:
        out.setdefault(k, set()).add(v)
    return {k: frozenset(v) for k, v in out.items()}


def parsed(body: bytes) -> dict[str, frozenset[str]]:
    return meaning(parse_qsl(body.decode("latin-1"), keep_blank_values=True, encoding="latin-1"))


def signed_string(params: dict[str, frozenset[str]]) -> str:
    """What Twilio's HMAC covers of the parameters (after the URL)."""
    return "".join(k + v for k in sorted(params) for v in sorted(params[k]))


class Mutator:
    def __init__(self, seed: int, public_url: str, tokens: tuple[str, ...]) -> None:
        self.rng = random.Random(seed)
        self.public_url = public_url
        self.tokens = tokens  # every token the bridge accepts
        self.token = tokens[0]

    # -- helpers ----------------------------------------------------------------------------------
    def sign(self, url: str, pairs: list[tuple[str, str]], token: str | None = None) -> str:
        from werkzeug.datastructures import MultiDict

        return str(RequestValidator(token or self.token).compute_signature(url, MultiDict(pairs)))

    def _text(self, n: int = 8) -> str:
        alphabet = string.ascii_letters + string.digits + "+-_ .%&=é☎\u00a0"
        return "".join(self.rng.choice(alphabet) for _ in range(n))

    def _other_value(self, value: str, taken: frozenset[str]) -> str:
        for _ in range(50):
            choice = self.rng.randrange(6)
            if choice == 0 and value:
                i = self.rng.randrange(len(value))
                candidate = value[:i] + self.rng.choice(string.printable.strip()) + value[i + 1 :]
            elif choice == 1:
                candidate = value + self.rng.choice(("0", " ", "x", "\u200b", "%"))
            elif choice == 2:
                candidate = value[:-1]
            elif choice == 3:
                candidate = value.swapcase()
            elif choice == 4:
                candidate = self._text(self.rng.randrange(1, 12))
            else:
                candidate = ""
            if candidate not in taken:
                return candidate
        return value + "-mutated"

    def _request(self, kind: str, path: str, pairs: list[tuple[str, str]], signature: str | None) -> Mutant:
        headers = {} if signature is None else {"X-Twilio-Signature": signature}
        return Mutant(kind, path, urlencode(pairs).encode(), "application/x-www-form-urlencoded", headers)

    # -- the mutations ----------------------------------------------------------------------------
    def mutate(self, base: Signed, kind: str) -> Mutant:
        pairs = list(base.pairs)
        url = self.public_url + base.path
        names = sorted({k for k, _ in pairs})
        if kind == "value":
            k = self.rng.choice(names)
            values = meaning(pairs)[k]
            i = next(i for i, (name, _) in enumerate(pairs) if name == k)
            changed = [*pairs[:i], (k, self._other_value(pairs[i][1], values)), *pairs[i + 1 :]]
            return self._request(kind, base.path, changed, self.sign(url, pairs))
        if kind == "name":
            k = self.rng.choice(names)
            variants = [k.lower(), k.upper(), k + "s", k[:-1], "X" + k, k.replace("Sid", "SID"), k + " "]
            new = self.rng.choice([v for v in variants if v and v not in names] or [k + "_"])
            changed = [(new if name == k else name, v) for name, v in pairs]
            return self._request(kind, base.path, changed, self.sign(url, pairs))
        if kind == "extra":
            if self.rng.random() < 0.5:
                k = self.rng.choice(names)
                extra = (k, self._other_value(self.rng.choice(sorted(meaning(pairs)[k])), meaning(pairs)[k]))
            else:
                extra = (self.rng.choice(("Foo", "Body", "StirVerstat", "ForwardedFrom", "Digits", "m")), "1")
                if extra[0] in names:
                    extra = (extra[0] + "2", "1")
            changed = [*pairs, extra]
            self.rng.shuffle(changed)
            return self._request(kind, base.path, changed, self.sign(url, pairs))
        if kind == "missing":
            k = self.rng.choice(names)
            changed = [(name, v) for name, v in pairs if name != k]
            return self._request(kind, base.path, changed, self.sign(url, pairs))
        if kind == "path":
            other = self.rng.choice([r for r in ROUTES if r != base.path.split("?")[0]])
            if self.rng.random() < 0.5:  # signed for another route, sent to this one
                return self._request(kind, base.path, pairs, self.sign(self.public_url + other, pairs))
            return self._request(kind, other, pairs, self.sign(url, pairs))  # the reverse
        if kind == "query":
            sep = "&" if "?" in base.path else "?"
            extra = f"{sep}{self.rng.choice(('x', 'm', 'rc', 'bodySHA256'))}={self.rng.randrange(100)}"
            if self.rng.random() < 0.5:
                return self._request(kind, base.path + extra, pairs, self.sign(url, pairs))
            return self._request(kind, base.path, pairs, self.sign(url + extra, pairs))
        if kind in ("scheme", "host", "port"):
            scheme, rest = self.public_url.split("://", 1)
            host = rest.split("/", 1)[0]
            if kind == "scheme":
                forged = ("http" if scheme == "https" else "https") + "://" + host
            elif kind == "host":
                forged = f"{scheme}://" + self.rng.choice(
                    ("evil.example.com", "127.0.0.1", "localhost", host.upper(), "www." + host, host + ".")
                )
            else:
                port = self.rng.choice([p for p in (80, 8000, 8080, 8443, 444, 1) if p != 443])
                forged = f"{scheme}://{host}:{port}"
            if forged == self.public_url:
                forged += ":1"
            return self._request(kind, base.path, pairs, self.sign(forged + base.path, pairs))
        if kind == "token":
            token = self.rng.choice(
                ("", "x" * 32, self.token[:-1], self.token.upper(), self.token + " ", self._text(32))
            )
            token = token if token not in self.tokens and token else "wrong-" + self._text(10)
            return self._request(kind, base.path, pairs, self.sign(url, pairs, token))
        if kind == "body":
            body = bytearray(urlencode(pairs).encode())
            original = parsed(bytes(body))
            for _ in range(50):
                mutated = bytearray(body)
                i = self.rng.randrange(len(mutated))
                op = self.rng.randrange(3)
                if op == 0:
                    mutated[i] = self.rng.choice(b"&=%+0aZ~\x00\xff")
                elif op == 1:
                    mutated.insert(i, self.rng.choice(b"&=%+aZ9"))
                else:
                    del mutated[i]
                if signed_string(parsed(bytes(mutated))) != signed_string(original):
                    return Mutant(
                        kind,
                        base.path,
                        bytes(mutated),
                        "application/x-www-form-urlencoded",
                        {"X-Twilio-Signature": self.sign(url, pairs)},
                    )
            raise AssertionError("no body mutation changed the parameters")
        if kind == "signature":
            good = self.sign(url, pairs)
            choice = self.rng.randrange(6)
            if choice == 0:
                bad = good[:-2] + ("A=" if good[-2:] != "A=" else "B=")
            elif choice == 1:
                bad = good[: self.rng.randrange(len(good))]
            elif choice == 2:
                bad = base64.b64encode(self.rng.randbytes(20)).decode()
            elif choice == 3:
                bad = good.swapcase()
            elif choice == 4:
                bad = " " + good
            else:
                return self._request(kind, base.path, pairs, None)  # no signature at all
            return self._request(kind, base.path, pairs, bad if bad != good else good + "x")
        if kind == "content_type":
            signature = self.sign(url, pairs)
            body = urlencode(pairs).encode()
            content_type = self.rng.choice(("application/json", "text/plain", "application/octet-stream"))
            return Mutant(kind, base.path, body, content_type, {"X-Twilio-Signature": signature})
        raise ValueError(kind)

    def stream(self, bases: list[Signed], n: int) -> Iterator[Mutant]:
        for i in range(n):
            kind = KINDS[i % len(KINDS)]
            for _ in range(50):
                base = self.rng.choice(bases)
                mutant = self.mutate(base, kind)
                if kind not in PARAM_KINDS or signed_string(parsed(mutant.body)) != signed_string(
                    meaning(base.pairs)
                ):
                    break
            else:
                raise AssertionError(f"no {kind} mutation changed the signed content")
            yield mutant


def equivalents(base: Signed) -> Iterator[bytes]:
    """Bodies that sign exactly like ``base`` but parse differently (Twilio's concatenation)."""
    pairs = list(base.pairs)
    names = sorted({k for k, _ in pairs})
    for i, (k, v) in enumerate(pairs):
        if v:  # "k=v" becomes the name "kv" with an empty value: same string, if the order holds
            merged = [*pairs[:i], (k + v, ""), *pairs[i + 1 :]]
            if signed_string(meaning(merged)) == signed_string(meaning(pairs)):
                yield urlencode(merged).encode()
    last = names[-1]
    value = dict(pairs)[last]
    for cut in range(1, len(value)):  # the last value split in two: "Ple" + a name "ase..."
        split = [(k, v) for k, v in pairs if k != last] + [(last, value[:cut]), (value[cut:], "")]
        if signed_string(meaning(split)) == signed_string(meaning(pairs)):
            yield urlencode(split).encode()
            break


PARAM_KINDS = ("value", "name", "extra", "missing")
