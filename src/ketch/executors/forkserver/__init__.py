"""A pre-warmed fork server: fresh processes per try without paying interpreter start-up.

Every task try is a fresh process (isolation, a clean crash boundary), but
starting Python and importing the worker costs far more than running a no-op
task. So the local executor starts this server once: a child Python process
that imports the worker modules and then, single-threaded, forks one grandchild
per spawn request. Forking a warm process takes about a millisecond.

Protocol (JSON lines over two pipes, fds given on the command line; the modules to
preload in ``$KETCH_FORKSERVER_PRELOAD``):

- requests: ``{"id", "argv", "env", "log_file", "target"}``;
- events: ``{"type": "ready"}`` once; ``{"type": "spawned", "id", "pid", "create_time"}``
  or ``{"type": "spawn_failed", "id", "error"}`` for each request, always before
  that child's ``{"type": "exit", "pid", "exit_code", "signal"}``.

The server has no threads (fork and threads do not mix), never opens a database
connection, reaps children from a SIGCHLD wake-up fd, and exits when its request
pipe reaches EOF (the executor died or stopped) without touching running children:
they are session leaders, keep running and keep reporting to the execution API.

The parent side, :class:`~ketch.executors.forkserver.client.ForkServer`, runs a reader
thread that turns events into callbacks and restarts the server if it dies.

One side per module: ``protocol`` (what both sides agree on), ``server`` (the server's
loop, in its own process: ``python -m ketch.executors.forkserver``), ``child`` (a forked
grandchild becoming a try), ``client`` (the parent side, in the scheduler). Import them
from where they live: this package re-exports nothing, so the server process never
imports the parent side.
"""
