"""A loopback TCP proxy that a test can cut, to partition one process from a server.

``cut()`` is a network partition: bytes stop flowing both ways, but every socket stays
open — the client's writes are still acknowledged (by this proxy's kernel) and nothing
comes back, so neither side learns anything until timeouts say so. ``heal()`` lets the
held bytes through again. ``reset()`` instead closes every connection (a peer that died
or a firewall's RST) and refuses new ones until ``heal()``.

Pure Python, one thread per direction per connection: enough for a test's handful of
database connections, and nothing but 127.0.0.1 is ever bound.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType


class TcpProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._flowing = threading.Event()
        self._flowing.set()
        self._refusing = False
        self._closed = False
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self.connections = 0
        threading.Thread(target=self._accept, name="tcp-proxy", daemon=True).start()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- what a test does ----------------------------------------------------------------

    def cut(self) -> None:
        """Partition: hold every byte in both directions; sockets stay open."""
        self._flowing.clear()

    def heal(self) -> None:
        self._refusing = False
        self._flowing.set()

    def reset(self) -> None:
        """Close every connection now and refuse new ones until :meth:`heal`."""
        self._refusing = True
        self._close_all()

    def close(self) -> None:
        self._closed = True
        self._flowing.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        self._close_all()

    # -- plumbing --------------------------------------------------------------------------

    def _close_all(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._refusing:
                client.close()
                continue
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        self._flowing.wait()  # a partition also holds new connections
        try:
            upstream = socket.create_connection(self.target, timeout=10)
            upstream.settimeout(None)
        except OSError:
            client.close()
            return
        with self._lock:
            self._sockets.update((client, upstream))
            self.connections += 1
        for src, dst in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                self._flowing.wait()  # cut: hold the bytes (and an EOF) until healed
                if not data or self._closed:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._sockets.difference_update((src, dst))
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.close()
