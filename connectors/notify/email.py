"""Staff notifications by email over SMTP (``notify.email`` jobs)."""

from __future__ import annotations

import smtplib
from email.message import EmailMessage
from typing import Any

from core.business_settings import SmtpSettings
from core.errors import AuthError, ConnectorConfigError, Rejected, TransientError
from core.outbox import Job


class EmailJob:
    def __init__(self, smtp: SmtpSettings | None) -> None:
        self.smtp = smtp

    def __call__(self, job: Job) -> dict[str, Any]:
        if self.smtp is None:
            raise ConnectorConfigError(
                "email notifications are configured but the config has no smtp: section"
            )
        msg = EmailMessage()
        msg["From"] = self.smtp.sender
        msg["To"] = job.payload["to"]
        msg["Subject"] = job.payload["subject"]
        # Idempotency for the receiving side: a retried job carries the same Message-ID.
        msg["Message-ID"] = f"<textback-job-{job.id}@{self.smtp.sender.split('@')[-1]}>"
        msg.set_content(job.payload["body"])
        try:
            with smtplib.SMTP(self.smtp.host, self.smtp.port, timeout=self.smtp.timeout_seconds) as client:
                if self.smtp.starttls:
                    client.starttls()
                if self.smtp.username:
                    client.login(self.smtp.username, self.smtp.password or "")
                client.send_message(msg)
        except smtplib.SMTPAuthenticationError:
            raise AuthError("the SMTP server rejected the username or password") from None
        except smtplib.SMTPRecipientsRefused:
            raise Rejected("the SMTP server refused the recipient address") from None
        except smtplib.SMTPResponseException as exc:
            if 400 <= exc.smtp_code < 500:
                raise TransientError(f"SMTP temporary failure {exc.smtp_code}") from None
            raise Rejected(f"SMTP permanent failure {exc.smtp_code}") from None
        except (TimeoutError, OSError, smtplib.SMTPException) as exc:
            raise TransientError(f"the SMTP server could not be reached ({type(exc).__name__})") from None
        return {"sent": True}
