"""What one task try runs: ``ketch task run DAG_ID TASK_ID RUN_ID --try N``.

The same code runs in a process forked by the local executor's fork server and
as a pod's command. It only talks HTTP to the execution API (never the
database): start (a 409 means another process owns this try, so exit without
running anything), load the DAG file, run the task under its execution_timeout
while a thread heartbeats, check the return value, finish. Output is plain text
on stdout (``kubectl logs`` works); ``--log-file`` tees it to a file as well. A try
whose log cannot be written (a full disk) fails with a reason that says so.

A try stopped from outside ends its log with one line saying why, never with ketch's
own traceback: ``try cancelled: ...`` when the task instance was cleared, marked or its
run cancelled (a heartbeat or the finish call is answered 401 "try has ended", or the
scheduler's SIGTERM arrives first), ``try stopped: ...`` for an execution_timeout or a
SIGTERM from elsewhere (the outcome is then recorded as failed).

One module per part of a try:

- ``entry``: ``main`` and the try's life from start to exit code
- ``task``: load the DAG and run the task, every way it can end turned into an outcome
- ``outcome``: the :class:`~ketch.worker.runner.outcome.Outcome` ``try/finish`` takes
- ``return_values``: return values and further XComs encoded and checked
- ``timeout``, ``heartbeat``: the execution_timeout and the heartbeat thread
- ``stopping``: SIGTERM and the execution API's "try has ended", in words
- ``children``: the processes the task started, stopped with it
- ``report``: the outcome sent to the execution API
- ``output``: the runner's own timestamped log lines

Imports stay light on purpose: no SQLAlchemy, FastAPI, Uvicorn, Alembic,
``ketch.db`` or ``ketch.api`` here (a test checks ``sys.modules``).

``main`` (the fork server's target, ``ketch task run``) and ``ENV_DAGS_FOLDER`` (which
the Kubernetes pod sets) stay importable from here.
"""

from ketch.worker.runner.entry import main
from ketch.worker.runner.task import ENV_DAGS_FOLDER

__all__ = ["ENV_DAGS_FOLDER", "main"]
