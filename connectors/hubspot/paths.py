"""Every HubSpot API path the connector calls, in one place.

HubSpot is replacing numbered versions with date-based ones (``/crm/objects/2026-03/contacts``);
``/crm/v4`` loses support on 2027-03-30 and ``/crm/v3`` in September 2027. hubspot-api-client 12
hard-codes the numbered paths inside its typed wrappers, so the connector sends every request through
the SDK's generic ``ApiClient.call_api`` with a path from here: moving to a dated version is a change
to this file alone (the emulator serves both the v3 and the 2026-03 object and property paths).

Placeholders in braces are filled (and URL-encoded) by the SDK from ``path_params``.
"""

from __future__ import annotations

DEFAULT_BASE_URL = "https://api.hubapi.com"

OBJECTS = "/crm/v3/objects"
PROPERTIES = "/crm/v3/properties"
PIPELINES = "/crm/v3/pipelines"
OWNERS = "/crm/v3/owners"
ASSOCIATIONS = "/crm/v4/objects"

# Objects: POST creates, GET/PATCH by id (or by a unique property with ?idProperty=).
OBJECT = OBJECTS + "/{objectType}"
OBJECT_BY_ID = OBJECTS + "/{objectType}/{objectId}"
BATCH_UPSERT = OBJECTS + "/{objectType}/batch/upsert"
BATCH_CREATE = OBJECTS + "/{objectType}/batch/create"  # up to 100 inputs, inline associations
SEARCH = OBJECTS + "/{objectType}/search"

# Properties (schema).
PROPERTY_LIST = PROPERTIES + "/{objectType}"
PROPERTY = PROPERTIES + "/{objectType}/{propertyName}"

# Deal pipelines and owners.
DEAL_PIPELINES = PIPELINES + "/deals"
OWNER = OWNERS + "/{ownerId}"

# Associations v4: PUT with a JSON array of {associationCategory, associationTypeId}.
ASSOCIATION = ASSOCIATIONS + "/{objectType}/{objectId}/associations/{toObjectType}/{toObjectId}"

# OAuth v1 token endpoint (form-encoded).
OAUTH_TOKEN = "/oauth/v1/token"  # noqa: S105 - a path, not a secret


def contacts_batch_upsert() -> str:
    """The concrete path of the contact upsert (the conformance kit injects faults there)."""
    return BATCH_UPSERT.replace("{objectType}", "contacts")
