"""Variable sync sources: each fetches a versioned snapshot of key -> value.

- :mod:`.base`: the :class:`VariableSource` protocol, :class:`Snapshot`, :class:`Unchanged`.
- :mod:`.aws_secrets_manager`: one JSON secret, or many secrets by name prefix / tags.
- :mod:`.file`: a mounted JSON file (ExternalSecret, ConfigMap).

:func:`build_source` turns one ``[variables] sync_sources`` entry into a source.
"""

from __future__ import annotations

from ketch.config import AwsSecretsManagerSource, FileSource
from ketch.variables.sources.base import (
    Snapshot,
    SourceError,
    Unchanged,
    VariableSource,
)

__all__ = ["Snapshot", "SourceError", "Unchanged", "VariableSource", "build_source"]


def build_source(config: AwsSecretsManagerSource | FileSource) -> VariableSource:
    """The source for one ``[variables] sync_sources`` entry."""
    if isinstance(config, FileSource):
        from ketch.variables.sources.file import FileVariableSource

        return FileVariableSource(config.path, source_id=config.source_id)
    from ketch.variables.sources.aws_secrets_manager import (
        PrefixSecretsSource,
        SecretJsonSource,
    )

    # The boto3 client is created on the first fetch: a missing region is a source error
    # shown in sync-status, not a scheduler that fails to start.
    where = {"region": config.region, "endpoint_url": config.endpoint_url}
    if config.secret_id:
        return SecretJsonSource(None, config.secret_id, source_id=config.source_id, **where)
    return PrefixSecretsSource(
        None, name_prefix=config.name_prefix, tags=config.tags, source_id=config.source_id, **where
    )
