"""Fuzz the REST API with schemathesis, in process: the CI test and the long benchmark.

The app is ``create_app(settings)`` with no identity provider, reached as the local
admin (client 127.0.0.1, ``Host: 127.0.0.1``), over schemathesis's ASGI transport.
Cases come from the app's own ``/openapi.json``:

- *coverage* cases: schemathesis's deterministic boundaries (limits, lengths, wrong
  types, missing fields) and methods the spec does not list (expect 405 with ``Allow``);
- *fuzzing* cases: Hypothesis, data that fits the schema (positive) and data that
  does not (negative), ``examples`` per operation and mode;
- the same fuzzing again with the path parameters pinned to seeded rows, so requests
  reach the code behind the 404s (a DAG, a run, a task instance, a pool, a variable);
- every integer of a path, a query or a body set to 2**31, 2**63 and 10**20 (Hypothesis
  seldom draws such numbers; databases refuse them).

Each response is classified: a 5xx or an exception is a *server error*; a status the
operation does not document is *undocumented*; a documented response whose body does
not match its schema is *nonconforming*; ``OPTIONS`` or an unlisted method answered
other than 405 with an ``Allow`` header listing the documented methods is *bad method*.
"""

from __future__ import annotations

import contextlib
import json
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

API = "/api/v1"
BASE_URL = "http://127.0.0.1"
HTTP_METHODS = ("get", "put", "post", "delete", "patch")
UNLISTED_METHODS = (*HTTP_METHODS, "trace", "query")

# Rows the seeded database has, for pinned path parameters.
SEEDED_PATH_PARAMETERS: dict[str, list[str]] = {
    "dag_id": ["etl", "other"],
    "dag_run_id": ["r1", "r2"],
    "task_id": ["extract", "transform", "load", "report"],
    "try_number": ["1"],
    "pool_name": ["default_pool", "etl_pool"],
    "key": ["fuzz_var", "secret_var"],
    "conn_id": ["fuzz_conn"],
    "token_id": ["1"],
    "email": ["someone@example.com"],
    # The seed has no mapped task: any index answers 404, but the route (digits only) is
    # matched, which the unlisted-method check needs to see its 405.
    "map_index": ["0"],
}


@dataclass
class Finding:
    kind: str  # server_error | undocumented | nonconforming | bad_method
    operation: str
    status: int | None
    request: str
    detail: str

    def __str__(self) -> str:
        return f"[{self.kind}] {self.operation} -> {self.status}: {self.detail}\n    {self.request}"


@dataclass
class FuzzReport:
    cases: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    findings: list[Finding] = field(default_factory=list)
    seconds: float = 0.0
    operations: int = 0

    def of_kind(self, kind: str) -> list[Finding]:
        return [f for f in self.findings if f.kind == kind]

    @property
    def server_errors(self) -> list[Finding]:
        return self.of_kind("server_error")

    @property
    def undocumented(self) -> list[Finding]:
        return self.of_kind("undocumented")

    def distinct(self) -> list[Finding]:
        """One finding per (kind, operation, status, first line of the detail)."""
        seen: dict[tuple[str, str, int | None, str], Finding] = {}
        for f in self.findings:
            seen.setdefault((f.kind, f.operation, f.status, f.detail.splitlines()[0]), f)
        return list(seen.values())

    def summary(self) -> str:
        kinds = Counter(f.kind for f in self.findings)
        statuses = ", ".join(f"{s}: {n}" for s, n in sorted(self.statuses.items()))
        return (
            f"{self.cases} cases over {self.operations} operations in {self.seconds:.1f} s;"
            f" server errors {kinds['server_error']}, undocumented statuses"
            f" {kinds['undocumented']}, nonconforming bodies {kinds['nonconforming']},"
            f" bad method answers {kinds['bad_method']}; statuses {{{statuses}}}"
        )


# --- the app under test --------------------------------------------------------------------

Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Any]


def from_loopback(app: ASGIApp) -> ASGIApp:
    """``app`` as reached from this machine: schemathesis's ASGI client calls itself
    ``testclient``; ketch lets in 127.0.0.1 (as ``tests.support.web.local_client``)."""

    async def wrapped(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            scope = {**scope, "client": ("127.0.0.1", 50000)}
        await app(scope, receive, send)

    return wrapped


def seed(engine: Any) -> None:
    """Two DAGs, two runs with task instances in every state, a log, an import error, a
    pool, variables, a connection and an API token: enough rows for the fuzzer to get
    past the 404s."""
    from sqlalchemy.orm import Session

    from ketch.auth import api_tokens
    from ketch.config import get_settings
    from ketch.db.models import ImportError_, Pool
    from ketch.executors.base import TryKey
    from ketch.variables import store
    from ketch.worker.task_log import log_path
    from tests.unit.test_operations import add_dag, add_run, serialized_chain

    settings = get_settings()
    with Session(engine) as session:
        etl = add_dag(session, serialized_chain())
        add_dag(session, serialized_chain("other"), paused=True)
        states = {"extract": "success", "transform": "failed", "load": "upstream_failed"}
        add_run(session, etl, "r1", {**states, "report": None}, run_state="failed")
        add_run(session, etl, "r2", {"extract": "running"}, run_state="running")
        session.add(
            ImportError_(
                filename="/dags/bad.py", stacktrace="Traceback\nSyntaxError: x", timestamp=_now()
            )
        )
        session.add(Pool(pool="etl_pool", slots=4, description="fuzz"))
        store.set_variable(session, settings, "fuzz_var", "v", actor="seed")
        store.set_variable(session, settings, "secret_var", "s", is_sensitive=True, actor="seed")
        session.commit()
        api_tokens.create_token(
            session, name="fuzz", role="viewer", expires_in=None, scopes=[], created_by="seed"
        )
        session.commit()
    path = log_path(settings.log_folder, TryKey("etl", "r1", "extract", 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("extract ran\n")
    _seed_connection(engine)


def _seed_connection(engine: Any) -> None:
    from sqlalchemy.orm import Session

    from ketch.config import get_settings
    from ketch.variables import store

    with Session(engine) as session:
        count = store.import_connections(
            session, get_settings(), {"fuzz_conn": {"conn_type": "http", "host": "example.com"}}
        )
        assert count == 1
        session.commit()


def _now() -> datetime:
    return datetime.now(UTC)


# --- running the cases ---------------------------------------------------------------------


def load_schema(spec: dict[str, Any], app: ASGIApp, *, only_api: bool = True) -> Any:
    """The schemathesis schema of ``spec``, calling ``app`` (from loopback)."""
    import schemathesis

    if only_api:
        spec = {**spec, "paths": {p: v for p, v in spec["paths"].items() if _is_rest(p)}}
    schema = schemathesis.openapi.from_dict(spec)
    schema.app = from_loopback(app)
    return schema


def _is_rest(path: str) -> bool:
    return path.startswith(API) or path == "/metrics"


def _operations(schema: Any) -> list[Any]:
    from schemathesis.core.result import Ok

    ops = [op.ok() for op in schema.get_all_operations() if isinstance(op, Ok)]
    return sorted(ops, key=lambda op: op.label)


def _describe(case: Any) -> str:
    try:
        return case.as_curl_command()
    except Exception:  # a case the curl printer cannot render
        return f"{case.method} {case.formatted_path} query={case.query!r} body={case.body!r}"


def _documented(operation: Any) -> set[str]:
    return set(operation.responses.status_codes)


def _is_documented(status: int, documented: set[str]) -> bool:
    return (
        str(status) in documented or f"{str(status)[0]}XX" in documented or "default" in documented
    )


def _classify(report: FuzzReport, case: Any, send: Callable[[Any], Any]) -> None:
    from schemathesis.core.failures import FailureGroup
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
    )

    op = case.operation
    report.cases += 1
    try:
        response = send(case)
    except Exception as exc:  # the app raised: a 500 over a real server
        report.statuses[500] += 1
        report.findings.append(
            Finding("server_error", op.label, None, _describe(case), f"{type(exc).__name__}: {exc}")
        )
        return
    status = response.status_code
    report.statuses[status] += 1
    if status >= 500:
        report.findings.append(
            Finding("server_error", op.label, status, _describe(case), response.text[:500])
        )
        return
    if not _is_documented(status, _documented(op)):
        report.findings.append(
            Finding("undocumented", op.label, status, _describe(case), response.text[:300])
        )
        return
    try:
        case.validate_response(
            response, checks=[response_schema_conformance, content_type_conformance]
        )
    except (FailureGroup, AssertionError) as exc:
        report.findings.append(
            Finding("nonconforming", op.label, status, _describe(case), str(exc)[:800])
        )


def _unexpected_methods(report: FuzzReport, schema: Any, client: Any) -> None:
    """Every path with a method it does not list, and OPTIONS: 405 and an ``Allow`` that
    names exactly the documented methods (HEAD and OPTIONS aside)."""
    for path, item in schema.raw_schema["paths"].items():
        declared = {m for m in item if m in HTTP_METHODS}
        url = BASE_URL + _fill_path(path)
        for method in ["options", *sorted(set(UNLISTED_METHODS) - declared)]:
            report.cases += 1
            label = f"{method.upper()} {path}"
            try:
                response = client.request(method.upper(), url)
            except Exception as exc:
                report.statuses[500] += 1
                report.findings.append(Finding("server_error", label, None, url, repr(exc)))
                continue
            report.statuses[response.status_code] += 1
            if response.status_code >= 500:
                report.findings.append(
                    Finding("server_error", label, response.status_code, url, response.text[:300])
                )
                continue
            allow = {
                m.strip().lower() for m in response.headers.get("allow", "").split(",") if m.strip()
            }
            allow -= {"head", "options"}
            if response.status_code != 405 or allow != declared:
                report.findings.append(
                    Finding(
                        "bad_method",
                        label,
                        response.status_code,
                        f"{method.upper()} {url}",
                        f"want 405 with Allow {sorted(declared)}, got Allow"
                        f" {response.headers.get('allow')!r}",
                    )
                )


def _fill_path(path: str) -> str:
    out = path
    for name, values in SEEDED_PATH_PARAMETERS.items():
        out = out.replace("{" + name + "}", values[0])
    return out


def _coverage_cases(schema: Any, operation: Any) -> Iterator[Any]:
    """schemathesis's deterministic boundary cases (its ``coverage`` phase), both modes."""
    from schemathesis.generation import GenerationMode

    config = schema.config.generation_for(operation=operation)
    try:
        cases = schema.iter_coverage_cases(
            operation,
            generation_modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
            generation_config=config,
        )
    except TypeError:  # another schemathesis version: the fuzzing still runs
        return
    for case in cases:
        # Methods the path does not list are sent by _unexpected_methods, to seeded rows.
        if case.method.upper() == operation.method.upper():
            yield case


def _pin_coverage_case(case: Any, operation: Any, rng: random.Random) -> None:
    """A coverage case that is about the query or the body gets seeded path parameters
    (else nearly all of them stop at a 404 before the code under test)."""
    from schemathesis.core.parameters import ParameterLocation

    pinned = _pinned(operation, rng)
    data = getattr(getattr(getattr(case, "meta", None), "phase", None), "data", None)
    location = getattr(data, "parameter_location", None)
    if pinned is not None and location is not None and location != ParameterLocation.PATH:
        case.path_parameters = pinned


BIG_INTEGERS = (2**31, 2**63, 10**20)
"""Beyond PostgreSQL's ``integer``, beyond 64 bits (SQLite's driver cannot bind it), beyond."""


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        node: Any = spec
        for part in schema["$ref"].lstrip("#/").split("/"):
            node = node[part]
        schema = node
    return schema


def _is_integer(spec: dict[str, Any], schema: dict[str, Any]) -> bool:
    schema = _resolve(spec, schema)
    options = [schema, *schema.get("anyOf", []), *schema.get("oneOf", [])]
    return any(_resolve(spec, o).get("type") == "integer" for o in options)


def _integer_body_fields(spec: dict[str, Any], operation: Any) -> list[str]:
    raw = spec["paths"].get(operation.path, {}).get(operation.method.lower(), {})
    content = raw.get("requestBody", {}).get("content", {}).get("application/json", {})
    body = _resolve(spec, content.get("schema", {}))
    return [name for name, prop in body.get("properties", {}).items() if _is_integer(spec, prop)]


def _big_integer_cases(
    spec: dict[str, Any], operation: Any, bases: list[Any], rng: random.Random
) -> Iterator[Any]:
    """Every integer in a path, a query or a body set beyond what a database stores: a
    422, never a 500 (deterministic, unlike Hypothesis's rare huge draws)."""
    base = next((c for c in bases if c.path_parameters is not None), None)
    path = dict(base.path_parameters or {}) if base is not None else {}
    path.update(_pinned(operation, rng) or {})
    for param in [*operation.path_parameters, *operation.query]:
        if not _is_integer(spec, param.definition.get("schema", {})):
            continue
        for big in BIG_INTEGERS:
            if param.location.value == "path":
                yield operation.Case(path_parameters={**path, param.name: big})
            else:
                yield operation.Case(path_parameters=path, query={param.name: big})
    fields = _integer_body_fields(spec, operation)
    body_base = next((c for c in bases if isinstance(c.body, dict)), None)
    if fields and body_base is not None:
        for name in fields:
            for big in BIG_INTEGERS:
                yield operation.Case(
                    path_parameters=path,
                    body={**body_base.body, name: big},
                    media_type="application/json",
                )


def _negatable(operation: Any) -> bool:
    """Whether negative data exists: a body, a query, or a path parameter that is not any
    string (Hypothesis spends seconds to find no negative case for ``{dag_id}`` alone)."""
    if operation.body or list(operation.query):
        return True
    return any(
        p.definition.get("schema", {})
        != {"type": "string", "title": p.definition.get("schema", {}).get("title")}
        for p in operation.path_parameters
    )


def _fuzz_cases(
    operation: Any, examples: int, mode: Any, seed: int, pinned: dict[str, str] | None
) -> list[Any]:
    """``examples`` Hypothesis cases of ``operation`` (no shrinking: nothing fails here)."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed
    from hypothesis.errors import Unsatisfiable

    strategy = operation.as_strategy(generation_mode=mode, path_parameters=pinned)
    cases: list[Any] = []

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @hypothesis_seed(seed)
    @given(strategy)
    def collect(case: Any) -> None:
        cases.append(case)

    with contextlib.suppress(Unsatisfiable):  # no case of this kind exists
        collect()
    return cases


def _pinned(operation: Any, rng: random.Random) -> dict[str, str] | None:
    names = [p.name for p in operation.path_parameters]
    if not names or any(n not in SEEDED_PATH_PARAMETERS for n in names):
        return None
    return {n: rng.choice(SEEDED_PATH_PARAMETERS[n]) for n in names}


def fuzz(
    app: Any,
    spec: dict[str, Any],
    *,
    examples: int,
    seed: int = 0,
    coverage: bool = True,
    progress: Callable[[str], None] | None = None,
) -> FuzzReport:
    """Run coverage, unexpected-method and fuzzing cases against ``app``."""
    from schemathesis.generation import GenerationMode
    from schemathesis.python.asgi import get_client

    schema = load_schema(spec, app)
    loopback_app = schema.app
    report = FuzzReport()
    started = time.monotonic()
    rng = random.Random(seed)
    operations = _operations(schema)
    report.operations = len(operations)
    with get_client(loopback_app) as client:

        def send(case: Any) -> Any:
            return case.call(base_url=BASE_URL, session=client)

        _unexpected_methods(report, schema, client)
        for n, operation in enumerate(operations):
            if progress is not None:
                progress(f"[{n + 1}/{len(operations)}] {operation.label}")
            if coverage:
                for case in _coverage_cases(schema, operation):
                    _pin_coverage_case(case, operation, rng)
                    _classify(report, case, send)
            modes = [GenerationMode.POSITIVE]
            if _negatable(operation):
                modes.append(GenerationMode.NEGATIVE)
            for mode in modes:
                case_seed = rng.randrange(2**32)
                generated = _fuzz_cases(operation, examples, mode, case_seed, None)
                for case in generated:
                    _classify(report, case, send)
                if mode == GenerationMode.POSITIVE:
                    for case in _big_integer_cases(schema.raw_schema, operation, generated, rng):
                        _classify(report, case, send)
                pinned = _pinned(operation, rng)
                if pinned is not None:
                    for case in _fuzz_cases(operation, examples, mode, case_seed + 1, pinned):
                        _classify(report, case, send)
    report.seconds = time.monotonic() - started
    return report


def fetch_spec(app: Any) -> dict[str, Any]:
    from tests.support.web import local_client

    with local_client(app) as client:
        response = client.get("/openapi.json")
        response.raise_for_status()
        spec: dict[str, Any] = response.json()
    return spec


def dump(report: FuzzReport) -> str:
    return json.dumps(
        {
            "cases": report.cases,
            "server_errors": len(report.server_errors),
            "undocumented_statuses": len(report.undocumented),
            "statuses": dict(sorted(report.statuses.items())),
        }
    )
