"""Property-based requests generated from the service's own OpenAPI schema (schemathesis): none may end in a 5xx.

Schemathesis's pytest loader (`schemathesis.pytest.from_fixture`) does not run under pytest 9 (it reads a removed
`node._nodeid`), so the test drives its Python API directly: one Hypothesis run per API operation, positive and negative
(schema-violating) examples, every response checked by schemathesis's `not_a_server_error`.
"""
from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings  # schemathesis brings hypothesis
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode

# A few examples per operation and mode keep the run short on a shared 2-core machine; derandomised so a failure reproduces.
EXAMPLES = 10


def test_no_generated_request_makes_a_server_error(app_server):
    schema = schemathesis.openapi.from_url(f"{app_server.url}/openapi.json")
    failures, tried = [], []
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            calls = []

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))
            def run(case):
                response = case.call(timeout=60)
                calls.append(response.status_code)
                case.validate_response(response, checks=[not_a_server_error])

            try:
                run()
            except Unsatisfiable:
                if mode is GenerationMode.POSITIVE:
                    raise
                # an operation without constraints (GET /healthz) has no schema-violating input to generate
            except Exception as exc:  # noqa: BLE001 -- collect every operation's failure, report them together
                failures.append(f"{operation.label} ({mode.value}): {type(exc).__name__}: {str(exc)[:1500]}")
            tried.append((operation.label, mode.value, len(calls)))
    assert len({label for label, _, _ in tried}) >= 9, tried
    assert sum(n for _, _, n in tried) >= 50, tried
    assert not failures, "\n\n".join(failures) + "\n\nserver log tail:\n" + app_server.log()[-3000:]
