"""The execution API served in this process on a loopback port, for ``ketch dags test``.

Tries run by ``ketch dags test`` talk to the same execution API as every other try (start,
finish, XComs, variables), so they record their outcome exactly as in production. Airflow 3's
``dag.test()`` does the same with an in-process execution API; here it is uvicorn in a daemon
thread on ``127.0.0.1`` and a free port, stopped when the test ends.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from ketch.config import Settings


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def execution_api(settings: Settings, start_timeout: float = 30.0) -> Iterator[str]:
    """Serve the execution API while the block runs; yields its base URL."""
    import uvicorn

    from ketch.api.execution_app import create_execution_app

    port = _free_port()
    config = uvicorn.Config(
        create_execution_app(settings), host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="ketch-dags-test-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the execution API did not start on 127.0.0.1:{port}")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}/execution"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
