"""`llmclf serve` against its own OpenAPI schema: schemathesis, every check, on a real uvicorn (127.0.0.1).

The schema must state each limit the server enforces (1 to max_texts texts, max_chars characters each)
and each status it answers, so that a client generated from it is never surprised: schemathesis sends
valid requests (which must be accepted) and invalid ones (which must be refused with a documented 4xx).
Run through schemathesis's engine, the same phases (examples, coverage, fuzzing, stateful) and checks as
`schemathesis run`, bounded in examples and time.
"""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")

from schemathesis.config import SchemathesisConfig  # noqa: E402
from schemathesis.engine import Status, events  # noqa: E402
from test_serve import live_server  # noqa: E402

from llmclf.predict import load_classifier  # noqa: E402
from llmclf.serve import create_app  # noqa: E402

MAX_TEXTS, MAX_CHARS = 8, 300  # small limits, so that generated bodies reach them and go past them
# schemathesis's default statuses for "invalid data refused", plus 413: this API answers a well-formed but
# too large request (too many texts, a text too long) with 413, and its schema documents that
REJECTIONS = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429"]
CONFIG = {"seed": 1, "max-time": 30, "generation": {"max-examples": 15},
          "checks": {"negative_data_rejection": {"expected-statuses": REJECTIONS}}}


def run_schemathesis(url: str):
    """Every phase and check against URL; returns (cases sent, failed checks, engine errors)."""
    schema = schemathesis.openapi.from_url(url + "/openapi.json", config=SchemathesisConfig.from_dict(CONFIG))
    cases, failures, errors = 0, [], []
    for event in schemathesis.engine.from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            cases += len(event.recorder.interactions)
            failures += [(event.label, c.name, c.failure_info) for checks in event.recorder.checks.values()
                         for c in checks if c.status == Status.FAILURE]
        elif isinstance(event, (events.NonFatalError, events.FatalError)):
            errors.append(event)
    return cases, failures, errors


def test_the_server_keeps_every_promise_of_its_schema(tiny_run):
    app = create_app(load_classifier(tiny_run, device="cpu"), max_texts=MAX_TEXTS, max_chars=MAX_CHARS)
    with live_server(app) as url:
        cases, failures, errors = run_schemathesis(url)
    print(f"schemathesis: {cases} cases")
    assert not errors, [str(getattr(e, "value", None) or getattr(e, "exception", None)) for e in errors]
    assert not failures, failures[:5]
    assert cases >= 100  # the run did test something: every operation, many bodies
