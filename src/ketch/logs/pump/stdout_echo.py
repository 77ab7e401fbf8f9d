"""The pod's stdout as the pump writes it: the same bytes, or JSON lines.

Best effort and apart from the live file (which is the record): ``kubectl logs`` and the
cluster's log collectors read it, and the scheduler rescues a dead pod's log from it.
"""

from __future__ import annotations

from typing import Any

from ketch.logs.pump.config import PumpConfig
from ketch.logs.pump.fdio import write_all


class StdoutEcho:
    """The pod's stdout: the same bytes, or JSON records framed by line."""

    def __init__(self, fd: int, config: PumpConfig) -> None:
        self.fd = fd
        self.config = config
        self.framer: Any = None
        if config.json_format:
            from ketch.logs.json_lines import LineFramer

            self.framer = LineFramer()
        self.failed = False

    def write(self, data: bytes) -> None:
        if self.framer is None:
            self._out(data)
            return
        for fragment, partial in self.framer.feed(data):
            self._record(fragment, partial)

    def flush_partial(self) -> None:
        if self.framer is not None:
            fragment = self.framer.flush_partial()
            if fragment:
                self._record(fragment, True)

    def close(self) -> None:
        self.flush_partial()

    def _record(self, fragment: bytes, partial: bool) -> None:
        from ketch.logs.json_lines import encode_record

        self._out(encode_record(fragment, self.config.meta, partial))

    def _out(self, data: bytes) -> None:
        if self.failed:
            return
        try:
            write_all(self.fd, data)
        except OSError:
            self.failed = True  # the pod's stdout is best effort; the file is the record
