"""Every error textback raises on purpose, in one tree.

::

    TextbackError
    ├── ConfigError            a config file or manifest is wrong; the message says what to fix
    ├── NotMigratedError       the database schema is behind; run `textback db upgrade`
    └── JobError               raised by outbox job handlers; the outbox switches on the type
        ├── TransientError     try again later with backoff (5xx, timeouts, connection errors)
        │   └── RateLimited    try again no earlier than ``retry_after`` seconds
        ├── AuthError          credentials rejected: pause that connector and alert an admin
        ├── ConnectorConfigError  the connector's configuration is wrong: the job goes dead
        └── Rejected           the vendor refused this request for good: dead, message kept

Handlers never sleep or retry on their own; the outbox owns retries. Error messages must never
contain secrets, full phone numbers or message bodies.
"""

from __future__ import annotations


class TextbackError(Exception):
    """Base class of textback's own errors."""


class ConfigError(TextbackError):
    """A configuration problem, phrased for the admin who must fix it."""

    def __init__(self, message: str, *, source: str | None = None, path: str | None = None) -> None:
        self.source = source
        self.path = path
        where = ""
        if source:
            where = f"{source}: "
        if path:
            where += f"{path}: "
        super().__init__(f"{where}{message}")


class NotMigratedError(TextbackError):
    """The database is not at the schema version this code needs."""


class JobError(TextbackError):
    """A job handler's typed failure. ``code`` is the vendor's error code when there is one."""

    retryable = False

    def __init__(self, message: str, *, code: str | int | None = None) -> None:
        self.code = code
        super().__init__(message)


class TransientError(JobError):
    retryable = True

    def __init__(
        self, message: str, *, code: str | int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class RateLimited(TransientError):
    def __init__(self, message: str, *, retry_after: float, code: str | int | None = None) -> None:
        super().__init__(message, code=code, retry_after=retry_after)


class AuthError(JobError):
    retryable = True


class ConnectorConfigError(JobError):
    pass


class Rejected(JobError):
    pass
