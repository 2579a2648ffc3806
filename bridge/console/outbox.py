"""The outbox: backlog and age per target, dead jobs with their vendor errors, and retries."""

from __future__ import annotations

from flask import flash, redirect, render_template, url_for
from flask.typing import ResponseReturnValue

from bridge.console import blueprint, queries
from bridge.console.common import PER_PAGE, fmt_duration, page_number, paged, reading, writing
from core import outbox as outbox_mod


@blueprint.get("/outbox")
def outbox() -> ResponseReturnValue:
    number = page_number()
    with reading() as s:
        backlog = outbox_mod.backlog(s)
        found = queries.dead_jobs(s, (number - 1) * PER_PAGE, PER_PAGE + 1)
        dead, page = paged(found, number)
        total_dead = queries.dead_count(s)
    return render_template(
        "outbox.html",
        backlog=dict(sorted(backlog.items())),
        dead=dead,
        page=page,
        total_dead=total_dead,
        fmt_duration=fmt_duration,
    )


@blueprint.post("/outbox/<int:job_id>/retry")
def retry_job(job_id: int) -> ResponseReturnValue:
    with writing() as s:
        count = outbox_mod.retry(s, job_id=job_id)
    if count:
        flash(f"Job {job_id} queued to run again.", "ok")
    else:
        flash(f"Job {job_id} cannot be retried (it does not exist or is running now).", "error")
    return redirect(url_for("console.outbox"))


@blueprint.post("/outbox/retry-dead")
def retry_dead() -> ResponseReturnValue:
    with writing() as s:
        count = outbox_mod.retry(s, dead=True)
    flash(f"{count} dead job(s) queued to run again.", "ok")
    return redirect(url_for("console.outbox"))
