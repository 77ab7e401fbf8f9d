"""The scheduler lease: one active scheduler per database, every write fenced.

Why a lease in a table rather than only a PostgreSQL advisory lock: an advisory lock
says who *holds* it, but a scheduler that was paused (SIGSTOP, a long GC, a frozen VM)
or cut off keeps believing it holds it, and its in-flight transactions would still
commit after another scheduler took over. A row with a **fencing token** lets every
transaction of the scheduler check, under a row lock held to its commit, that it is
still the holder — so a returning scheduler cannot write a single decision.

The row (``scheduler_lease``: holder, fencing_token, acquired_at, renewed_at,
expires_at) is timed by the **database clock** (``statement_timestamp()``, one instant
per statement), so clock skew between hosts cannot matter:

- acquire: insert the row, or take it with a compare-and-set UPDATE on the token seen
  when it expired, was released, or its holder is provably dead; the token increments;
- renew: every ``lease_renew_interval``, ``UPDATE ... WHERE holder = me AND token =
  mine`` pushes ``expires_at`` to ``now + lease_ttl``; a watchdog stops the scheduler
  when the lease may have expired before a renewal got through;
- fence: before each commit of a scheduling transaction that wrote something,
  ``SELECT fencing_token ... FOR SHARE``: a takeover's UPDATE waits for transactions
  that passed the check, and every later check fails (:class:`LeaseLost`);
- release (SIGTERM): ``expires_at = renewed_at = now``; a standby takes over at once.

Fast paths on PostgreSQL, so failover does not always wait for the TTL: the holder
keeps a session-level advisory lock keyed on its holder id on its lease connection. A
standby waits on that lock (``lock_timeout``-bounded): it is granted the moment the
holder's connection closes — the process died or its socket was torn down — and the
standby takes over at once. A holder that is paused or partitioned keeps its server
connection, so the standby waits for expiry; then it terminates the old holder's
backends (found by ``application_name``), so a paused transaction can neither block
the takeover with its row locks nor commit later.

SQLite supports one scheduler: an exclusive ``flock`` on a file next to the database
(released by the kernel when the process dies, so a restart after kill -9 is
immediate); a second scheduler exits with a clear error. The row is written there too.

One concept per module (import them from where they live; this package re-exports nothing):

- ``statements``: the SQL on the lease row (read, insert, take, renew, release), both backends;
- ``fence``: :class:`LeaseLost` and the commit check installed on the scheduler's sessions;
- ``holder``: a process's holder id and what its PostgreSQL connections carry;
- ``link``: the lease's own connection and the holder's advisory lock on it;
- ``sqlite_lock``: the one-scheduler file lock of a SQLite database;
- ``standby``: waiting for the lease and taking it over;
- ``term``: one stretch of leadership: renewal, watchdog, release;
- ``scheduler_lease``: :class:`SchedulerLease`, what the scheduler process uses.
"""
