"""``textback console hash-password``: make the admin password hash the console checks logins against."""

from __future__ import annotations

import secrets
import sys

import click
from werkzeug.security import generate_password_hash

MIN_LENGTH = 12


@click.group()
def console() -> None:
    """The admin console (served by the bridge at /console)."""


@console.command("hash-password")
@click.option("--stdin", "from_stdin", is_flag=True, help="Read the password from the first line of stdin.")
@click.option(
    "--method",
    type=click.Choice(["scrypt", "pbkdf2"]),
    default="scrypt",
    show_default=True,
    help="Key derivation function.",
)
def hash_password(from_stdin: bool, method: str) -> None:
    """Print the hash of an admin password, for console.password_hash or TEXTBACK_CONSOLE_PASSWORD_HASH.

    The password itself is never stored: the console keeps only this hash.
    """
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Admin password", hide_input=True, confirmation_prompt=True)
    if len(password) < MIN_LENGTH:
        raise click.UsageError(f"the password must be at least {MIN_LENGTH} characters long")
    kdf = "pbkdf2:sha256:600000" if method == "pbkdf2" else "scrypt"
    click.echo(generate_password_hash(password, method=kdf))
    click.echo(
        "put it in the config as console.password_hash (or in TEXTBACK_CONSOLE_PASSWORD_HASH); for the\n"
        f"session key, e.g. console.secret_key: {secrets.token_urlsafe(32)}",
        err=True,
    )
