"""Scoped API tokens on every endpoint of leads, sales and metrics, driven by each service's own
OpenAPI document: a GET needs `read`, anything else `write`, and a token without the scope is
refused with 403 problem+json whatever else is wrong with the request (the scope is checked
before the body or the parameters)."""

from __future__ import annotations

import re
import uuid

import pytest

from services.leads.main import build_app as leads_app
from services.leads.settings import LeadsSettings
from services.metrics.main import build_app as metrics_app
from services.metrics.settings import MetricsSettings
from services.sales.main import build_app as sales_app
from services.sales.settings import SalesSettings
from tests.support import serve

pytestmark = pytest.mark.integration

TOKENS = "dashboard:read-secret:read, crm:write-secret:write, dpo:privacy-secret:privacy, admin:all-secret:read,write"
BY_SCOPE = {"read": "read-secret", "write": "write-secret", "privacy": "privacy-secret"}
SERVICES = {"leads": (leads_app, LeadsSettings), "sales": (sales_app, SalesSettings),
            "metrics": (metrics_app, MetricsSettings)}  # fmt: skip


def operations(openapi: dict) -> list[tuple[str, str, str]]:
    """(method, path with its parameters filled, the scope it needs) for every operation
    that declares a 403."""
    found = []
    for path, item in openapi["paths"].items():
        for method, operation in item.items():
            if "403" not in operation.get("responses", {}):
                continue
            needs = "privacy" if path.startswith("/v1/privacy") else "read" if method == "get" else "write"
            found.append((method.upper(), re.sub(r"\{[^}]+\}", str(uuid.uuid4()), path), needs))
    return found


@pytest.mark.parametrize("service", SERVICES)
async def test_every_endpoint_refuses_each_scope_it_should(make_settings, service):
    build, settings_cls = SERVICES[service]
    settings = await make_settings(settings_cls, api_tokens=TOKENS)
    app = build(settings)
    async with serve(app) as client:
        ops = operations(app.openapi())
        assert {needs for _, _, needs in ops} >= {"read", "write"}, ops  # the walk found the service's API
        for method, path, needs in ops:
            for scope, secret in BY_SCOPE.items():
                response = await client.request(
                    method, path, headers={"Authorization": f"Bearer {secret}"}, json=None if method == "GET" else {}
                )
                if scope == needs:
                    assert response.status_code not in (401, 403), (method, path, scope, response.text)
                else:
                    assert response.status_code == 403, (method, path, scope, response.text)
                    assert response.headers["content-type"] == "application/problem+json"
                    assert response.json()["scope"] == needs
            anonymous = await client.request(method, path)
            assert anonymous.status_code == 401, (method, path)
            admin = await client.request(method, path, headers={"Authorization": "Bearer all-secret"})
            assert admin.status_code not in (401, 403) or needs == "privacy", (method, path, admin.text)
