"""What every error answer must look like: RFC 9457 problem details."""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Any

PROBLEM_CONTENT_TYPE = "application/problem+json"


def check_problem(
    status: int,
    content_type: str,
    body: bytes,
    expected: int | Collection[int],
    field: str | None = None,
) -> dict[str, Any]:
    """Assert an answer is the expected error as problem+json; returns the problem.

    `content_type` is the media type without parameters. With `field`, the problem's
    `field` member or its `detail` sentence must name that field.
    """
    allowed = {expected} if isinstance(expected, int) else set(expected)
    context = f"status {status}, {content_type}: {body[:500]!r}"
    assert status in allowed, f"expected {sorted(allowed)}, got {context}"
    assert content_type == PROBLEM_CONTENT_TYPE, context
    problem = json.loads(body)
    assert isinstance(problem, dict), context
    for member in ("type", "title", "detail"):
        assert isinstance(problem.get(member), str) and problem[member], (member, context)
    assert problem.get("status") == status, context
    if field is not None:
        assert problem.get("field") == field or field in problem["detail"], (
            f"the problem does not name the field {field!r}: {context}"
        )
    return problem
