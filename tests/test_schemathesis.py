"""Schemathesis throws generated requests, valid and not, at every operation of
/openapi.json on a live server with no keys: no answer may be a 5xx, and every answer
must have a documented status, content type and shape.

Examples per operation are bounded so the whole run stays within about a minute, and
derandomized so a failure is the same on the next run (it prints the request; replay it
with the curl command schemathesis shows).

schemathesis' own pytest integration (`from_fixture`) does not run on pytest 9, so each
operation's strategy is driven by hypothesis here; the operations to test are read from
the document the server builds, at collection time, so every route gets its own test.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode, checks

from mqpy.api.openapi import document
from tests.support import raw_http
from tests.support.server import ServerProcess

# Slow (`make check` skips it; `make test` runs it): property-based cases, every operation.
pytestmark = pytest.mark.slow

# MQPY_SCHEMATHESIS_EXAMPLES raises it for a longer hunt (a few hundred runs minutes).
EXAMPLES_PER_OPERATION = int(os.environ.get("MQPY_SCHEMATHESIS_EXAMPLES", "25"))
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
]
OPERATIONS = [
    (method.upper(), path, bool(operation.get("parameters") or operation.get("requestBody")))
    for path, operations in document()["paths"].items()
    for method, operation in operations.items()
]
# Negative examples need something to make invalid: a parameter or a body.
CASES = [
    pytest.param(method, path, mode, id=f"{method} {path} {mode}")
    for method, path, has_input in OPERATIONS
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if has_input or mode is GenerationMode.POSITIVE
]


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(
        tmp_path_factory.mktemp("schemathesis"),
        # Fast retries and few attempts: generated subscriptions point nowhere.
        ["--retry-base", "0.05", "--retry-max", "0.2", "--max-attempts", "2"],
        env={"MQPY_ADMIN_KEY": "", "NO_PROXY": "127.0.0.1,localhost"},
    ).start()
    yield server
    server.kill()
    # A 5xx is caught per request; this catches what a client could not see.
    assert "Traceback" not in server.log, server.log[-5000:]


@pytest.fixture(scope="module")
def api_schema(live_server: ServerProcess) -> schemathesis.BaseSchema:
    """The document as the live server serves it, not as imported here."""
    served = raw_http.request(live_server.url, "GET", "/openapi.json").json()
    return schemathesis.openapi.from_dict(served)


@pytest.mark.parametrize(("method", "path", "mode"), CASES)
def test_the_api_keeps_its_document(
    api_schema: schemathesis.BaseSchema,
    live_server: ServerProcess,
    method: str,
    path: str,
    mode: GenerationMode,
) -> None:
    operation = api_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def run(case: schemathesis.Case[Any]) -> None:
        case.call_and_validate(base_url=live_server.url, checks=CHECKS)

    run()
