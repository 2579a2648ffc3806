"""Connector health: the shared state of every installed connector, and a live ``check``."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from flask import render_template
from flask.typing import ResponseReturnValue

from bridge.console import blueprint, queries
from bridge.console.common import reading

log = logging.getLogger("textback.console")

CHECK_TIMEOUT_SECONDS = 20.0


@dataclass
class CheckOutcome:
    business: str
    connector: str
    ok: bool
    summary: str
    details: list[str] = field(default_factory=list)


def run_check(business_id: str, connector_id: str, timeout: float = CHECK_TIMEOUT_SECONDS) -> CheckOutcome:
    """Build the connector the way the worker does and make its live, harmless check call.

    Whatever goes wrong (a missing key, a vendor error, no answer in time) becomes a failed
    outcome with a sentence to show; it never becomes a server error.
    """
    from bridge.app import state
    from bridge.runtime import Connectors

    st = state()
    box: list[CheckOutcome] = []

    def work() -> None:
        try:
            result = Connectors(st.config, st.factory).build(business_id, connector_id).check()
            box.append(CheckOutcome(business_id, connector_id, bool(result.ok), str(result.summary),
                                    [str(d) for d in result.details]))
        except Exception as exc:
            log.warning("console connector check failed", extra={"connector": connector_id,
                                                                  "error": type(exc).__name__})
            box.append(CheckOutcome(business_id, connector_id, False, f"{type(exc).__name__}: {exc}"))

    worker = threading.Thread(target=work, name=f"console-check-{connector_id}", daemon=True)
    worker.start()
    worker.join(timeout)
    if not box:
        return CheckOutcome(business_id, connector_id, False, f"no answer within {timeout:g} s")
    return box[0]


def _page(result: CheckOutcome | None = None) -> ResponseReturnValue:
    with reading() as s:
        rows = queries.installed_connectors(s)
    return render_template("health.html", rows=rows, result=result)


@blueprint.get("/connectors")
def connectors() -> ResponseReturnValue:
    return _page()


@blueprint.post("/connectors/<business_id>/<connector_id>/check")
def check_connector(business_id: str, connector_id: str) -> ResponseReturnValue:
    return _page(run_check(business_id, connector_id))
