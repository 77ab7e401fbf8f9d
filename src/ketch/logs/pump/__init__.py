"""The log pump: a process per try between the try's output and everything that keeps it.

A try's fds 1 and 2 (its prints, tracebacks, a bash task's children) are a pipe. The
pump, forked by the try before anything else runs, reads that pipe, masks secrets
(:class:`~ketch.logs.masking.StreamMasker`), appends the bytes to the try's live file,
echoes them to the pod's stdout (plain, or JSON lines with ``[logging] json_format``)
and, in a pod with an S3 archive, ships chunks (:class:`~ketch.logs.shipper.Shipper`).

Why a separate process rather than a thread of the try: a try killed with SIGKILL (an
OOM kill, the executor's timeout backstop) loses a thread with everything it had read
but not written; the pump, in its own session, sees the pipe's end-of-file only once
every writer is gone and writes what is left first. (A cgroup-wide OOM kill in a pod
kills the pump too: the scheduler then rescues the tail from the pod's log.)

The try talks to its pump over a socket pair (:class:`PumpHandle`):

- ``S`` + a secret: the pump masks it from now on and acknowledges; the try waits for
  the acknowledgement, so a secret printed after ``mask_secret()`` returned is masked;
- ``Q``: the pump first processes every byte already in the pipe, then answers with
  the first error it had writing the live file (the runner fails the try with it).

Lines of ketch's own in the log (``[<time>] ketch: log archive unavailable: ...``) are
written by the pump only, between two lines of the try's output (a line the try left
unfinished keeps them waiting until it ends, or until the pump's end, where a newline is
added first). The pod's shipper hands them over in memory; the scheduler's log keeper,
which ships a local try's log, leaves them in ``{live file}.notes`` (:func:`add_note`),
which the pump takes every 0.2 s and at its end (:func:`take_notes`). Once the pump is
gone the keeper appends its lines itself, holding the live file's ``flock`` exclusively.

Stdlib only (a try imports it); the shipper imports boto3 lazily, in pods with S3 only.

One concept per module: ``config`` (what the executor asks of a pump, ``$KETCH_LOG_PUMP``),
``handle`` (the try's side: fork the pump, forward secrets, wait for it), ``control`` (the
socket-pair messages between the two), ``process`` (the pump's loop), ``stdout_echo`` (the
pod's stdout), ``notes`` (lines of ketch's own, left by the scheduler), ``fdio``. This
package re-exports what a try uses (``from ketch.logs import pump``; ``pump.start``...).
"""

from ketch.logs.pump.config import PumpConfig, default_finish_timeout, meta_from_argv
from ketch.logs.pump.handle import PumpHandle, current, pump_pid, start

__all__ = [
    "PumpConfig",
    "PumpHandle",
    "current",
    "default_finish_timeout",
    "meta_from_argv",
    "pump_pid",
    "start",
]
