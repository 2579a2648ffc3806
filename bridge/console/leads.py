"""Leads: the searchable list, one lead's page, and the reply box that takes a conversation over."""

from __future__ import annotations

import logging
import re
import uuid

from flask import abort, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from bridge.console import blueprint, queries
from bridge.console.common import PER_PAGE, config, page_number, paged, reading, safe_url, writing
from core import leads as leads_mod
from core import relay
from core.models import Lead

log = logging.getLogger("textback.console")

MAX_REPLY = 1600
_REF = re.compile(r"^[A-Za-z0-9-]{8,64}$")


@blueprint.get("/leads")
def leads() -> ResponseReturnValue:
    cfg = config()
    q = request.args.get("q", "")[:120]
    status = request.args.get("status") or None
    status = status if status in leads_mod.STATUSES else None
    business = request.args.get("business") or None
    number = page_number()
    with reading() as s:
        found = queries.search_leads(s, q, status, business, (number - 1) * PER_PAGE, PER_PAGE + 1)
        rows, page = paged(found, number)
        opted = queries.opted_out_phones(s, rows)
    return render_template(
        "leads.html",
        rows=rows,
        page=page,
        q=q,
        status=status,
        business=business,
        statuses=leads_mod.STATUSES,
        businesses=[b.id for b in cfg.businesses],
        opted=opted,
    )


@blueprint.get("/leads/<lead_id>")
def lead(lead_id: str) -> ResponseReturnValue:
    with reading() as s:
        row = s.get(Lead, lead_id)
        if row is None:
            abort(404)
        data = leads_mod.to_json(s, row)
        links = [
            {"connector": link.connector_id, "key": link.key, "remote_id": link.remote_id,
             "url": safe_url(link.remote_url), "raw_url": link.remote_url}
            for link in queries.crm_links(s, lead_id)
        ]
        takeover = bool(row.human_takeover)
    return render_template(
        "lead.html",
        lead=data,
        links=links,
        takeover=takeover,
        business=config().business(data["business"]),
        reply_ref=uuid.uuid4().hex,
        safe_url=safe_url,
        max_reply=MAX_REPLY,
    )


@blueprint.post("/leads/<lead_id>/reply")
def reply(lead_id: str) -> ResponseReturnValue:
    body = (request.form.get("body") or "").strip()
    ref = request.form.get("ref") or ""
    # The form's ref makes a resubmitted form harmless (same dedupe key); a bad one gets a new one.
    ref = ref if _REF.match(ref) else uuid.uuid4().hex
    back = redirect(url_for("console.lead", lead_id=lead_id) + "#reply")
    if not body:
        flash("Not sent: the message is empty.", "error")
        return back
    if len(body) > MAX_REPLY:
        flash(f"Not sent: the message is longer than {MAX_REPLY} characters.", "error")
        return back
    with writing() as s:
        row = s.get(Lead, lead_id)
        if row is None:
            abort(404)
        business = config().business(row.business_id)
        if business is None:
            flash(f"Not sent: business {row.business_id!r} is no longer configured.", "error")
            return back
        if "opted_out" in leads_mod.suppressions(s, business.id, row.phone):
            flash("Not sent: this caller has opted out of texts (replied STOP). "
                  "They must text START before you can write to them.", "error")
            return back
        message = relay.send_human(s, business, row, body, author="console:admin", ref=f"console:{ref}")
    if message is None:
        flash("Already sent: this form was submitted before.", "info")
    else:
        log.info("console reply queued", extra={"lead_id": lead_id, "message_id": message.id})
        flash("Sent. The conversation is now yours: no more automated texts go to this caller.", "ok")
    return back
