"""A mounted JSON file of variables (an ExternalSecret or ConfigMap in the scheduler pod).

The version is the SHA-256 of the file's bytes, so a change is seen whatever the
mtime does (Kubernetes swaps a ``..data`` symlink when a mounted Secret changes).
The file is read in one go; an empty, half-written (not valid JSON) or non-object
file is a :class:`SourceError`, never an empty set of variables.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ketch.variables.sources.base import (
    Snapshot,
    SourceError,
    Unchanged,
    variables_from_json_object,
)


class FileVariableSource:
    kind = "file"

    def __init__(self, path: Path | str, *, source_id: str | None = None) -> None:
        self.path = Path(path)
        self.source_id = source_id or f"file:{self.path}"

    def fetch(self, previous_version: str | None) -> Snapshot | Unchanged:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            raise SourceError(f"{self.path} does not exist", kind="not_found") from None
        except OSError as exc:
            raise SourceError(f"cannot read {self.path}: {exc.strerror}", kind="io") from None
        version = "sha256:" + hashlib.sha256(data).hexdigest()
        if version == previous_version:
            return Unchanged(version)
        if not data.strip():
            raise SourceError(f"{self.path} is empty", kind="empty")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise SourceError(f"{self.path} is not UTF-8 text", kind="invalid_json") from None
        return Snapshot(version, variables_from_json_object(text, str(self.path)))
