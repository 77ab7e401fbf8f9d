"""Fuzz the REST API at length: ``python -m benchmarks.rest_fuzz --examples N
[--backend sqlite|postgresql] [--seed S] [--no-coverage]``.

The long form of ``tests/integration/test_rest_fuzz.py``: the app from
``create_app(settings)``, reached in process as the local admin, on a seeded database
(DAGs, runs and task instances, a log, a pool, variables, a connection, a token);
schemathesis's coverage cases, every path with methods it does not list, and ``N``
Hypothesis cases per operation and generation mode (positive and negative), again with
path parameters pinned to seeded rows. See :mod:`tests.support.rest_fuzz`.

Prints the cases run, server errors (5xx or an exception), undocumented statuses,
responses that do not match their schema and bad answers to unlisted methods, then one
line per distinct finding; writes benchmarks/results/rest_fuzz.json. Exits 1 when it
found anything.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rest_fuzz")
    parser.add_argument("--examples", type=int, default=50, help="cases per operation and mode")
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-coverage", action="store_true", help="skip the coverage cases")
    parser.add_argument("--quiet", action="store_true", help="no per-operation progress")
    args = parser.parse_args(argv)

    home = Path(tempfile.mkdtemp(prefix="ketch-fuzz-"))
    os.environ["KETCH_HOME"] = str(home)
    for key in list(os.environ):
        if key.startswith("KETCH__"):
            del os.environ[key]
    if args.backend == "postgresql":
        from tests.support.postgres import start_postgres

        server = start_postgres()
        try:
            os.environ["KETCH__DATABASE__SQL_ALCHEMY_CONN"] = server.create_database("fuzz")
            return run(args)
        finally:
            server.stop()
    return run(args)


def run(args: argparse.Namespace) -> int:
    from tests.support import rest_fuzz

    from ketch.api.app import create_app
    from ketch.config import get_settings
    from ketch.db.engine import get_engine
    from ketch.db.migrate import migrate

    settings = get_settings()
    engine = get_engine(settings.database_url)
    migrate(engine)
    rest_fuzz.seed(engine)
    app = create_app(settings)
    spec = rest_fuzz.fetch_spec(app)

    def progress(line: str) -> None:
        if not args.quiet:
            print(line, file=sys.stderr, flush=True)

    report = rest_fuzz.fuzz(
        app,
        spec,
        examples=args.examples,
        seed=args.seed,
        coverage=not args.no_coverage,
        progress=progress,
    )
    distinct = report.distinct()
    print(f"backend:               {args.backend}")
    print(f"examples per op/mode:  {args.examples} (seed {args.seed})")
    print(f"cases run:             {report.cases} ({report.operations} operations)")
    print(f"seconds:               {report.seconds:.1f}")
    print(f"server errors:         {len(report.server_errors)}")
    print(f"undocumented statuses: {len(report.undocumented)}")
    print(f"nonconforming bodies:  {len(report.of_kind('nonconforming'))}")
    print(f"bad method answers:    {len(report.of_kind('bad_method'))}")
    print(f"statuses:              {dict(sorted(report.statuses.items()))}")
    for finding in distinct:
        print(finding)
    RESULTS.mkdir(exist_ok=True)
    result = {
        "backend": args.backend,
        "examples": args.examples,
        "seed": args.seed,
        "coverage": not args.no_coverage,
        "cases": report.cases,
        "operations": report.operations,
        "seconds": round(report.seconds, 1),
        "server_errors": len(report.server_errors),
        "undocumented_statuses": len(report.undocumented),
        "nonconforming_bodies": len(report.of_kind("nonconforming")),
        "bad_method_answers": len(report.of_kind("bad_method")),
        "statuses": {str(k): v for k, v in sorted(report.statuses.items())},
        "distinct_findings": [str(f) for f in distinct],
    }
    (RESULTS / "rest_fuzz.json").write_text(json.dumps(result, indent=2) + "\n")
    return 1 if report.findings else 0


if __name__ == "__main__":
    sys.exit(main())
