"""The REST API under schemathesis: no 5xx, every status documented, bodies as documented.

The short form runs in CI (coverage cases plus ``KETCH_FUZZ_EXAMPLES`` Hypothesis cases
per operation and mode, default 2: about 1,300 requests, well under a minute here);
``python -m benchmarks.rest_fuzz --examples N`` is the long form. Both seed a database
with DAGs, runs, task instances, a log, a pool, variables, a connection and a token,
and pin path parameters to those rows half the time, so the fuzzer reaches the code
behind the 404s. See :mod:`tests.support.rest_fuzz` for what each case checks.
"""

from __future__ import annotations

import os

from sqlalchemy import Engine

from ketch.api.app import create_app
from ketch.config import get_settings
from tests.support import rest_fuzz

EXAMPLES = int(os.environ.get("KETCH_FUZZ_EXAMPLES", "2"))
SEED = int(os.environ.get("KETCH_FUZZ_SEED", "20261201"))


def test_the_rest_api_survives_the_fuzzer(sqlite_engine: Engine) -> None:
    rest_fuzz.seed(sqlite_engine)
    app = create_app(get_settings())
    spec = rest_fuzz.fetch_spec(app)
    report = rest_fuzz.fuzz(app, spec, examples=EXAMPLES, seed=SEED)
    print(report.summary())
    assert report.operations >= 35  # every REST operation was fuzzed
    assert report.cases >= 300
    assert report.statuses[200] > 50, report.summary()  # it got past the 404s
    problems = report.distinct()
    listing = "\n".join(str(p) for p in problems[:25])
    assert not problems, f"{report.summary()}\n{listing}"
