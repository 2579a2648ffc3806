"""Associations v4, deal pipelines, owners and the OAuth v1 token endpoint."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flask import Response, request

from connectors.hubspot.emulator_auth import OAuthError
from connectors.hubspot.emulator_common import (
    ApiError,
    iso,
    json_response,
    new_correlation_id,
    not_found,
    now,
    validation,
)
from connectors.hubspot.emulator_schema import (
    DEAL_PIPELINES,
    DEFAULT_ASSOCIATION,
    OWNERS,
    ObjectType,
    pipeline,
)

if TYPE_CHECKING:
    from connectors.hubspot.emulator import HubSpotEmulator

_V4 = "/crm/v4/objects/<from_type>/<from_id>/associations"


def install_routes(emu: HubSpotEmulator) -> None:
    routes = Routes(emu)
    add = emu.app.add_url_rule
    add(f"{_V4}/default/<to_type>/<to_id>", "hs_assoc_default", routes.associate_default, methods=["PUT"])
    add(f"{_V4}/<to_type>/<to_id>", "hs_assoc_create", routes.associate, methods=["PUT"])
    add(f"{_V4}/<to_type>/<to_id>", "hs_assoc_delete", routes.dissociate, methods=["DELETE"])
    add(f"{_V4}/<to_type>", "hs_assoc_list", routes.associations, methods=["GET"])
    batch = "/crm/v4/associations/<from_type>/<to_type>/batch"
    add(f"{batch}/create", "hs_assoc_batch_create", routes.batch_create, methods=["POST"])
    add(f"{batch}/read", "hs_assoc_batch_read", routes.batch_read, methods=["POST"])
    add("/crm/v3/pipelines/<otype>", "hs_pipelines", routes.pipelines, methods=["GET"])
    add("/crm/v3/pipelines/<otype>/<pipeline_id>", "hs_pipeline", routes.pipeline, methods=["GET"])
    add("/crm/v3/pipelines/<otype>/<pipeline_id>/stages", "hs_stages", routes.stages, methods=["GET"])
    add("/crm/v3/owners/", "hs_owners", routes.owners, methods=["GET"], strict_slashes=False)
    add("/crm/v3/owners/<owner_id>", "hs_owner", routes.owner, methods=["GET"])
    add("/oauth/v1/token", "hs_oauth_token", routes.token, methods=["POST"])
    add("/oauth/v1/access-tokens/<token>", "hs_oauth_info", routes.token_info, methods=["GET"])
    add("/oauth/v1/refresh-tokens/<token>", "hs_oauth_revoke", routes.revoke, methods=["DELETE"])


def _labels_pair(from_type: ObjectType, from_id: str, to_type: ObjectType, to_id: str) -> dict[str, Any]:
    # v4 answers carry object ids as JSON numbers even though objects elsewhere use strings.
    return {"fromObjectTypeId": from_type.type_id, "fromObjectId": int(from_id),
            "toObjectTypeId": to_type.type_id, "toObjectId": int(to_id), "labels": []}


def _types(specs: list[tuple[str, int]]) -> list[dict[str, Any]]:
    return [{"category": category, "typeId": type_id, "label": None} for category, type_id in specs]


class Routes:
    def __init__(self, emu: HubSpotEmulator) -> None:
        self.emu = emu
        self.store = emu.store

    def _pair(self, from_type: str, to_type: str, write: bool) -> tuple[ObjectType, ObjectType]:
        source = self.emu.object_type(from_type, write=write)
        return source, self.emu.object_type(to_type, write=write)

    # -- associations v4 --------------------------------------------------------------------------
    def associate(self, from_type: str, from_id: str, to_type: str, to_id: str) -> Response:
        specs = self.emu.body()
        with self.emu.lock:
            source, target = self._pair(from_type, to_type, write=True)
            self.store.check_exists(source, from_id)
            _, checked = self.store.check_links(source, target, to_id, specs)
            self.store.link(source, from_id, target, to_id, checked)
            return json_response(_labels_pair(source, from_id, target, to_id), 201)

    def associate_default(self, from_type: str, from_id: str, to_type: str, to_id: str) -> Response:
        started = iso(now())
        with self.emu.lock:
            source, target = self._pair(from_type, to_type, write=True)
            type_id = DEFAULT_ASSOCIATION.get((source.name, target.name))
            if type_id is None:
                raise validation(f"There is no default association from {source.type_id} to {target.type_id}")
            self.store.check_exists(source, from_id)
            self.store.check_exists(target, to_id)
            self.store.link(source, from_id, target, to_id, [("HUBSPOT_DEFINED", type_id)])
            reverse = DEFAULT_ASSOCIATION[(target.name, source.name)]
        results = [
            {"from": {"id": from_id}, "to": {"id": to_id},
             "associationSpec": {"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": type_id}},
            {"from": {"id": to_id}, "to": {"id": from_id},
             "associationSpec": {"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": reverse}},
        ]
        return json_response({"status": "COMPLETE", "results": results, "startedAt": started,
                              "completedAt": iso(now())})

    def dissociate(self, from_type: str, from_id: str, to_type: str, to_id: str) -> Response:
        with self.emu.lock:
            source, target = self._pair(from_type, to_type, write=True)
            self.store.unlink(source, from_id, target, to_id)
        return Response(status=204)

    def associations(self, from_type: str, from_id: str, to_type: str) -> Response:
        try:
            limit = int(request.args.get("limit", 500))
            after = int(request.args.get("after") or 0)
        except ValueError as exc:
            raise validation("limit and after must be integers") from exc
        with self.emu.lock:
            source, target = self._pair(from_type, to_type, write=False)
            obj = self.store.objects[source.name].get(from_id)
            if obj is None or obj.archived:
                raise not_found()
            rows = self.store.linked(source, from_id, target)
        page = [{"toObjectId": int(to_id), "associationTypes": _types(specs)}
                for to_id, specs in rows[after:after + limit]]
        body: dict[str, Any] = {"results": page}
        if after + limit < len(rows):
            body["paging"] = {"next": {"after": str(after + limit)}}
        return json_response(body)

    def batch_create(self, from_type: str, to_type: str) -> Response:
        body = self.emu.object_body()
        started = iso(now())
        inputs = body.get("inputs")
        if not isinstance(inputs, list) or not inputs:
            raise validation("Invalid input JSON: some of required attributes are not set [inputs]")
        results: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        with self.emu.lock:
            source, target = self._pair(from_type, to_type, write=True)
            for item in inputs:
                item = item if isinstance(item, dict) else {}
                from_id = str((item.get("from") or {}).get("id", ""))
                to_id = str((item.get("to") or {}).get("id", ""))
                try:
                    self.store.check_exists(source, from_id)
                    _, checked = self.store.check_links(source, target, to_id, item.get("types"))
                except ApiError as exc:
                    errors.append({"status": "error", "category": exc.category, "message": exc.message,
                                   "context": exc.context or {}})
                    continue
                self.store.link(source, from_id, target, to_id, checked)
                results.append(_labels_pair(source, from_id, target, to_id))
        answer: dict[str, Any] = {"status": "COMPLETE", "results": results}
        if errors:
            answer.update({"numErrors": len(errors), "errors": errors})
        answer.update({"startedAt": started, "completedAt": iso(now())})
        return json_response(answer, 207 if errors else 201)

    def batch_read(self, from_type: str, to_type: str) -> Response:
        body = self.emu.object_body()
        started = iso(now())
        with self.emu.lock:
            source, target = self._pair(from_type, to_type, write=False)
            results = []
            for item in body.get("inputs") or []:
                from_id = str(item.get("id", "")) if isinstance(item, dict) else ""
                rows = self.store.linked(source, from_id, target)
                targets = [{"toObjectId": int(to_id), "associationTypes": _types(specs)}
                           for to_id, specs in rows]
                if targets:
                    results.append({"from": {"id": from_id}, "to": targets})
        return json_response({"status": "COMPLETE", "results": results, "startedAt": started,
                              "completedAt": iso(now())})

    # -- pipelines and owners ---------------------------------------------------------------------
    def _deal_pipelines(self, otype: str) -> list[dict[str, Any]]:
        with self.emu.lock:
            kind = self.emu.object_type(otype, write=False)
        return DEAL_PIPELINES if kind.name == "deals" else []

    def pipelines(self, otype: str) -> Response:
        return json_response({"results": self._deal_pipelines(otype)})

    def pipeline(self, otype: str, pipeline_id: str) -> Response:
        found = pipeline(pipeline_id) if self._deal_pipelines(otype) else None
        if found is None:
            raise ApiError(404, f"Unable to find pipeline {pipeline_id}", "OBJECT_NOT_FOUND")
        return json_response(found)

    def stages(self, otype: str, pipeline_id: str) -> Response:
        found = pipeline(pipeline_id) if self._deal_pipelines(otype) else None
        if found is None:
            raise ApiError(404, f"Unable to find pipeline {pipeline_id}", "OBJECT_NOT_FOUND")
        return json_response({"results": found["stages"]})

    def owners(self) -> Response:
        with self.emu.lock:
            self.emu.allow("crm.objects.owners.read")
        email = request.args.get("email")
        rows = [o for o in OWNERS if email is None or o["email"].lower() == email.lower()]
        return json_response({"results": rows})

    def owner(self, owner_id: str) -> Response:
        with self.emu.lock:
            self.emu.allow("crm.objects.owners.read")
        found = next((o for o in OWNERS if o["id"] == owner_id), None)
        if found is None:
            raise not_found()
        return json_response(found)

    # -- OAuth v1 -------------------------------------------------------------------------------
    def token(self) -> Response:
        form = {k: v for k, v in request.form.items()}
        try:
            with self.emu.lock:
                return json_response(self.emu.auth.grant(form))
        except OAuthError as exc:
            return json_response({"status": exc.status, "message": exc.message,
                                  "correlationId": new_correlation_id()}, 400)

    def token_info(self, token: str) -> Response:
        with self.emu.lock:
            info = self.emu.auth.access_token_info(token)
        if info is None:
            return json_response({"status": "error", "message": "Token not found or expired",
                                  "correlationId": new_correlation_id()}, 404)
        return json_response(info)

    def revoke(self, token: str) -> Response:
        with self.emu.lock:
            if token in self.emu.auth.refresh_tokens:
                self.emu.auth.refresh_tokens[token] = True
        return Response(status=204)
