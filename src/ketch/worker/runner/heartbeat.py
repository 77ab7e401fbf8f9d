"""The heartbeat thread: tells the execution API the try lives while the task runs, and
ends the whole try at once when the API answers that the try is over."""

from __future__ import annotations

import threading

from ketch.worker.client import ExecutionApiClient, ExecutionApiError, TryStateConflict
from ketch.worker.runner.children import terminate_whole_group
from ketch.worker.runner.output import say
from ketch.worker.runner.stopping import why_ended


class Heartbeat:
    """Tells the API every interval that the try lives; a 409 ends the whole try at once.

    ``stop()`` waits for an in-flight heartbeat, so no heartbeat can race the
    finish call and misread the try's own outcome as an external change.
    """

    def __init__(self, client: ExecutionApiClient, interval: float) -> None:
        self._client = client
        self._interval = interval
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="ketch-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._lock:
            self._stopped.set()

    def _loop(self) -> None:
        while not self._stopped.wait(self._interval):
            with self._lock:
                if self._stopped.is_set():
                    return
                self._beat()

    def _beat(self) -> None:
        try:
            self._client.heartbeat()
        except TryStateConflict as exc:
            terminate_whole_group(
                f"try cancelled: {why_ended(exc.detail)}; its processes were killed"
            )
        except ExecutionApiError as exc:
            say(f"heartbeat failed: {exc}")
