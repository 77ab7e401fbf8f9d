"""The execution API: the only door a running task try has into ketch.

A try carries a token naming exactly one try; every call here is about that try
(the paths carry no ids). The API records only the try's own life: it started,
it is alive, it ended with this outcome and return value. Scheduling decisions
stay with the scheduler. State changes are conditional UPDATEs or row-locked
reads, so a duplicate process (a relaunched try, a retried request) can never
run the task twice or overwrite a newer try's outcome.

A token works only while its try lives: the task instance it names is ``queued`` or
``running`` with the token's try number. Once the try ended (finished, failed, skipped,
marked, cancelled, cleared, superseded by a newer try, its run deleted) every call
answers 401 ``try has ended: ...``, so a kept pod or a leaked token reads nothing.
Two answers stay possible after the end, for requests whose first answer was lost: a
repeated start by the same process while the try runs, and a repeated finish that
names the outcome this try recorded. The check costs nothing on the hot paths: it is
the guard of the conditional UPDATEs (start, heartbeat, finish), looked into only when
the UPDATE changed no row; reads (XCom, variables, connections) do one primary-key
lookup of the task instance.

One module per resource, each with its own router under ``/execution``:

- ``start``: ``POST /try/start`` and the task's context it answers
- ``heartbeat``: ``POST /try/heartbeat``
- ``rendered_fields``: ``PUT /try/rendered-fields``
- ``xcom``: ``GET /try/xcom/{task_id}``, and the one-row XCom upsert ``finish`` uses
- ``finish``: ``POST /try/finish`` (outcome, return value, XComs, reschedule)
- ``variables``: ``GET /variables/{key}``, ``GET /connections/{conn_id}``

and what they share: ``claims`` (the try token's claims as dependencies, the session and
settings), ``liveness`` (is the token's try still alive? the 401/409 answers), and
``serialized`` (a run's parsed DAG, cached by content hash).

:data:`router` includes them all, in the order the routes have always been matched.
"""

from __future__ import annotations

from fastapi import APIRouter

from ketch.api.execution import finish, heartbeat, rendered_fields, start, variables, xcom

router = APIRouter()
for _part in (start, heartbeat, rendered_fields, xcom, finish, variables):
    router.include_router(_part.router)
