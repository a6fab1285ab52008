"""Schemathesis against the served OpenAPI spec of a real server process, on SQLite and
PostgreSQL (the e2e ``server`` fixture), with a user's bearer token and the admin token.

Every operation of ``/api/openapi.json`` gets ``EXAMPLES_POSITIVE`` cases that follow
its schema and ``EXAMPLES_NEGATIVE`` that break it (wrong types, out-of-range ids,
patterns violated, ...). Each response is checked for: no 5xx, a documented status, a
documented content type, a body and headers that match the documented schema, and
for a negative case a 4xx (the server enforces what the spec says). The totals are
printed (``-s``) for the closing note of issue 11.
"""
from __future__ import annotations

from collections import Counter

import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.e2e.conftest import Account

EXAMPLES_POSITIVE = 13
EXAMPLES_NEGATIVE = 12   # 25 per operation
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, response_headers_conformance]
# the web console's files are not an API (a path of any file name, HTML and scripts)
SKIP = {"console_static"}


def _run(operation, mode: GenerationMode, examples: int, base_url: str, headers: dict,  # type: ignore[no-untyped-def]
         tally: Counter, failures: list[str]) -> None:
    checks = CHECKS + ([negative_data_rejection] if mode is GenerationMode.NEGATIVE else [])

    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case) -> None:  # type: ignore[no-untyped-def]
        response = case.call(base_url=base_url, headers=headers, timeout=15)
        tally["cases"] += 1
        try:
            case.validate_response(response, checks=checks, headers=headers)
        except FailureGroup as group:
            for failure in group.exceptions:
                tally[f"fail:{failure.title}"] += 1
                failures.append(f"{operation.label} [{mode.value}] {failure.title}: "
                                f"{str(failure.message)[:300]} :: {case.as_curl_command()[:400]}")

    try:
        fuzz()
    except Unsatisfiable:  # negative mode of an operation without parameters or body
        assert mode is GenerationMode.NEGATIVE, operation.label
        tally["no_negative"] += 1


def test_schemathesis_on_the_served_spec(server, sim) -> None:  # type: ignore[no-untyped-def]
    account = Account(server, sim)
    headers = {**account.headers(), "X-Admin-Token": server.admin_token}
    # the served spec, less its security requirements: the test sends the tokens itself
    # on every case (schemathesis would otherwise generate, and negate, Authorization)
    spec = requests.get(server.url + "/api/openapi.json", timeout=10).json()
    for item in spec["paths"].values():
        for operation in item.values():
            operation["security"] = []
    schema = schemathesis.openapi.from_dict(spec)
    tally: Counter = Counter()
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.definition.raw.get("operationId") in SKIP:
            continue
        operations += 1
        for mode, n in ((GenerationMode.POSITIVE, EXAMPLES_POSITIVE),
                        (GenerationMode.NEGATIVE, EXAMPLES_NEGATIVE)):
            _run(operation, mode, n, server.url, headers, tally, failures)
    by_check = {k[5:]: v for k, v in tally.items() if k.startswith("fail:")}
    print(f"\nschemathesis {server.url}: operations={operations} cases={tally['cases']} "
          f"failures={sum(by_check.values())} by_check={by_check}")
    for line in failures[:40]:
        print("  " + line)
    assert operations >= 25 and tally["cases"] >= operations * 10
    assert not failures, f"{len(failures)} failures; first: {failures[0]}"
    log = server.log()
    assert "unhandled error" not in log and "Traceback" not in log, log[-3000:]
