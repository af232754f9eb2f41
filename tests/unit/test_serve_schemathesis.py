"""Schemathesis over the OpenAPI document: generated requests for every operation, no 5xx.

Operations are driven through their hypothesis strategies directly (schemathesis'
pytest plugin does not run under pytest 9 yet).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from test_serve_api import build_lake

from tidelake.serve.api import create_app

schemathesis = pytest.importorskip("schemathesis")
from schemathesis.checks import not_a_server_error  # noqa: E402

TOKEN = "schemathesis-token"
HEADERS = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory) -> Any:
    lake = build_lake(tmp_path_factory.mktemp("serve-schemathesis"))
    return schemathesis.openapi.from_asgi("/openapi.json", create_app(lake.pipeline, token=TOKEN))


OPERATIONS = [
    ("GET", "/api/tables"), ("GET", "/api/tables/{name}"), ("GET", "/api/tables/{name}/rows"),
    ("POST", "/api/query"), ("GET", "/api/queries"), ("GET", "/api/queries/{name}"),
    ("POST", "/api/ingest/{topic}"), ("GET", "/api/flows"), ("GET", "/metrics"),
]  # fmt: skip


def test_schema_covers_every_operation(api_schema: Any) -> None:
    found = {(op.ok().method.upper(), op.ok().path) for op in api_schema.get_all_operations()}
    assert found == set(OPERATIONS)


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_operation_never_5xx(api_schema: Any, method: str, path: str) -> None:
    operation = api_schema[path][method]
    seen: list[int] = []

    @given(case=operation.as_strategy())
    @settings(
        max_examples=40,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    def run(case: Any) -> None:
        response = case.call(headers=HEADERS)
        case.validate_response(response, checks=[not_a_server_error], headers=HEADERS)
        seen.append(response.status_code)

    run()
    assert seen and max(seen) < 500
