"""schemathesis hooks (scripts/schemathesis.toml): the positive-data check, except
for the refusals the API makes by design of data a schema cannot describe.

Schema-valid strings may hold NUL or a lone surrogate, which no database or JSON
encoder can store, and free-form ``metadata`` may nest without end: the API answers
400 with ``param`` and a code saying why (``unstorable``, ``not_finite``,
``max_depth``). An Idempotency-Key the fuzzer already sent with another body is a
422 (``idempotency_key_reused``): a refusal that depends on what was sent before,
which no schema can describe. Every other refusal of schema-valid data is still a
failure.
"""

from __future__ import annotations

import json
from typing import Any

import schemathesis
from schemathesis.specs.openapi.checks import positive_data_acceptance

BY_DESIGN = {"unstorable", "not_finite", "max_depth", "idempotency_key_reused"}


def refused_by_design(response: Any) -> bool:
    if response.status_code not in (400, 422):
        return False
    try:
        return json.loads(response.text)["error"]["code"] in BY_DESIGN
    except (ValueError, KeyError, TypeError):
        return False


@schemathesis.check
def positive_data_accepted_unless_unstorable(ctx: Any, response: Any, case: Any) -> bool | None:
    if refused_by_design(response):
        return None
    return positive_data_acceptance(ctx, response, case)
