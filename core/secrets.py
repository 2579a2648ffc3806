"""Secrets at rest: Fernet with key rotation (MultiFernet).

Keys come from ``$TEXTBACK_SECRET_KEY`` (comma-separated, newest first) or from the file named
by ``secret_key_file`` in the config (one key per line, newest first). Rotating: put the new key
first, keep the old ones after it, then run ``textback secrets rotate``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from core.errors import ConfigError

ENV_KEY = "TEXTBACK_SECRET_KEY"


def generate_key() -> str:
    return Fernet.generate_key().decode()


def _keys(key_file: str | None) -> list[str]:
    raw = os.environ.get(ENV_KEY, "")
    keys = [k.strip() for k in raw.split(",") if k.strip()]
    if not keys and key_file:
        path = Path(key_file)
        if not path.is_file():
            raise ConfigError(
                f"secret_key_file {key_file} does not exist (create it with `textback secrets keygen`)"
            )
        keys = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return keys


class SecretBox:
    def __init__(self, key_file: str | None = None) -> None:
        keys = _keys(key_file)
        if not keys:
            raise ConfigError(
                f"no encryption key for connector secrets: set {ENV_KEY} (make one with "
                "`textback secrets keygen`) or secret_key_file in the config"
            )
        try:
            self._fernet = MultiFernet([Fernet(k.encode()) for k in keys])
        except ValueError:
            raise ConfigError(f"{ENV_KEY} / secret_key_file holds a key that is not a Fernet key") from None

    def seal(self, secrets: dict[str, Any]) -> str:
        return self._fernet.encrypt(json.dumps(secrets, sort_keys=True).encode()).decode()

    def open(self, token: str | None) -> dict[str, Any]:
        if not token:
            return {}
        try:
            data = json.loads(self._fernet.decrypt(token.encode()))
        except InvalidToken:
            raise ConfigError(
                "stored connector secrets cannot be decrypted with the configured key(s); "
                "was the key rotated without keeping the old one?"
            ) from None
        return dict(data)

    def seal_text(self, text: str | None) -> str | None:
        return self._fernet.encrypt(text.encode()).decode() if text else None

    def open_text(self, token: str | None) -> str | None:
        if not token:
            return None
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            raise ConfigError("a stored token cannot be decrypted with the configured key(s)") from None

    def rotate(self, token: str) -> str:
        return self._fernet.rotate(token.encode()).decode()
