"""Login and logout."""

from __future__ import annotations

from flask import redirect, render_template, request, session, url_for
from flask.typing import ResponseReturnValue
from werkzeug.security import check_password_hash

from bridge.console import blueprint
from bridge.console.common import config, reading
from bridge.console.security import logged_in, login_blocked, note_failed_login, start_session

TOO_MANY = "Too many failed logins from your address. Wait a minute, then try again."


def _next_url() -> str:
    """Where to go after logging in: only a console page of this site (no open redirect)."""
    target = request.values.get("next") or ""
    if target.startswith("/console") and not target.startswith("//") and "\\" not in target:
        return target
    return url_for("console.dashboard")


@blueprint.route("/login", methods=["GET", "POST"])
def login() -> ResponseReturnValue:
    if request.method == "GET":
        if logged_in():
            return redirect(_next_url())
        return render_template("login.html", next=request.args.get("next", ""), error=None)
    addr = request.remote_addr or "unknown"
    with reading() as s:
        blocked = login_blocked(s, addr)
    if blocked:
        return render_template("login.html", next=_next_url(), error=TOO_MANY), 429
    password = request.form.get("password", "")
    password_hash = config().console.password_hash or ""
    if not password or not check_password_hash(password_hash, password):
        note_failed_login(addr)
        return render_template("login.html", next=_next_url(), error="Wrong password."), 401
    start_session()
    return redirect(_next_url())


@blueprint.post("/logout")
def logout() -> ResponseReturnValue:
    session.clear()
    return redirect(url_for("console.login"))
