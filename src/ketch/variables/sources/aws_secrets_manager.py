"""AWS Secrets Manager sources, built to cost one cheap call per poll when nothing changed.

- :class:`SecretJsonSource`: one secret (name or ARN) whose value is a JSON object;
  each key becomes a variable. A poll is one ``DescribeSecret``: the version id
  staged ``AWSCURRENT`` is the snapshot's version, and ``GetSecretValue`` is called
  only when it differs from the one applied last.
- :class:`PrefixSecretsSource`: every secret whose name starts with a prefix and/or
  carries given tags becomes one variable, named by the secret name minus the prefix.
  A poll is ``ListSecrets`` (one call per 100 secrets), whose entries carry each
  secret's current version id; only secrets whose version changed are fetched, with
  ``BatchGetSecretValue`` (20 per call).

The client comes from the standard boto3 chain (region, credentials, retry mode and
``AWS_MAX_ATTEMPTS`` from the environment or ``~/.aws``), with ``endpoint_url`` for
VPC endpoints or a test server. Errors become :class:`SourceError` with the AWS error
code and message, which never include a secret value.
"""

from __future__ import annotations

import hashlib
from typing import Any

from ketch.variables.metrics import AWS_API_CALLS
from ketch.variables.sources.base import (
    Snapshot,
    SourceError,
    Unchanged,
    value_text,
    variables_from_json_object,
)

KIND = "aws-secrets-manager"
BATCH_SIZE = 20  # BatchGetSecretValue's limit per call
LIST_PAGE_SIZE = 100  # ListSecrets' largest page


def _count_call(model: Any = None, **_kwargs: Any) -> None:
    AWS_API_CALLS.labels(operation=getattr(model, "name", "unknown")).inc()


def make_client(*, region: str | None = None, endpoint_url: str | None = None) -> Any:
    """A Secrets Manager client from the standard boto3 chain; every call is counted."""
    import boto3
    from botocore.config import Config

    client = boto3.session.Session().client(
        "secretsmanager",
        region_name=region,
        endpoint_url=endpoint_url,
        config=Config(connect_timeout=5, read_timeout=15),
    )
    client.meta.events.register("before-call.secrets-manager", _count_call)
    return client


def _source_error(what: str, exc: Exception) -> SourceError:
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(exc, SourceError):
        return exc
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = error.get("Code", "ClientError")
        return SourceError(f"{what}: {code}: {error.get('Message', '')}".rstrip(": "), kind=code)
    if isinstance(exc, BotoCoreError):
        return SourceError(f"{what}: {exc}", kind=type(exc).__name__)
    return SourceError(f"{what}: {type(exc).__name__}: {exc}", kind=type(exc).__name__)


class _LazyClient:
    def __init__(self, client: Any, region: str | None, endpoint_url: str | None) -> None:
        self._client = client
        self._region = region
        self._endpoint_url = endpoint_url

    @property
    def client(self) -> Any:
        if self._client is None:
            try:
                self._client = make_client(region=self._region, endpoint_url=self._endpoint_url)
            except Exception as exc:  # NoRegionError and friends: a source error, not a crash
                raise _source_error("cannot create the Secrets Manager client", exc) from None
        return self._client


class SecretJsonSource(_LazyClient):
    kind = KIND

    def __init__(
        self,
        client: Any,
        secret_id: str,
        *,
        source_id: str | None = None,
        region: str | None = None,
        endpoint_url: str | None = None,
    ) -> None:
        super().__init__(client, region, endpoint_url)
        self.secret_id = secret_id
        self.source_id = source_id or f"{KIND}:{secret_id}"

    def fetch(self, previous_version: str | None) -> Snapshot | Unchanged:
        client = self.client
        try:
            described = client.describe_secret(SecretId=self.secret_id)
        except Exception as exc:
            raise _source_error(f"DescribeSecret {self.secret_id}", exc) from None
        current = next(
            (
                vid
                for vid, stages in (described.get("VersionIdsToStages") or {}).items()
                if "AWSCURRENT" in stages
            ),
            None,
        )
        if current is None:
            raise SourceError(f"secret {self.secret_id} has no AWSCURRENT version", kind="no_value")
        if current == previous_version:
            return Unchanged(current)
        try:
            got = client.get_secret_value(SecretId=self.secret_id, VersionId=current)
        except Exception as exc:
            raise _source_error(f"GetSecretValue {self.secret_id}", exc) from None
        text = got.get("SecretString")
        if text is None:
            raise SourceError(
                f"secret {self.secret_id} holds binary data, not a JSON object", kind="binary"
            )
        values = variables_from_json_object(text, f"secret {self.secret_id} version {current}")
        return Snapshot(got.get("VersionId", current), values)


class PrefixSecretsSource(_LazyClient):
    kind = KIND

    def __init__(
        self,
        client: Any,
        *,
        name_prefix: str | None = None,
        tags: dict[str, str] | None = None,
        source_id: str | None = None,
        region: str | None = None,
        endpoint_url: str | None = None,
    ) -> None:
        if not name_prefix and not tags:
            raise ValueError("a prefix source needs name_prefix or tags")
        super().__init__(client, region, endpoint_url)
        self.name_prefix = name_prefix or ""
        self.tags = dict(tags or {})
        self.source_id = source_id or f"{KIND}:prefix={self.name_prefix}"
        # secret ARN -> (version id, variable value) of the last snapshot fetched
        self._cache: dict[str, tuple[str, str]] = {}

    def _filters(self) -> list[dict[str, Any]]:
        filters: list[dict[str, Any]] = []
        if self.name_prefix:
            filters.append({"Key": "name", "Values": [self.name_prefix]})
        if self.tags:
            filters.append({"Key": "tag-key", "Values": list(self.tags)})
            filters.append({"Key": "tag-value", "Values": list(self.tags.values())})
        return filters

    def _matches(self, entry: dict[str, Any]) -> bool:
        if not entry.get("Name", "").startswith(self.name_prefix):
            return False
        tags = {t.get("Key"): t.get("Value") for t in entry.get("Tags") or []}
        return all(tags.get(k) == v for k, v in self.tags.items())

    def _list(self) -> dict[str, tuple[str, str]]:
        """ARN -> (variable key, AWSCURRENT version id) of every matching secret with a value."""
        found: dict[str, tuple[str, str]] = {}
        kwargs: dict[str, Any] = {"Filters": self._filters(), "MaxResults": LIST_PAGE_SIZE}
        while True:
            try:
                page = self.client.list_secrets(**kwargs)
            except Exception as exc:
                raise _source_error(f"ListSecrets {self.source_id}", exc) from None
            for entry in page.get("SecretList", []):
                if not self._matches(entry):
                    continue
                current = next(
                    (
                        vid
                        for vid, stages in (entry.get("SecretVersionsToStages") or {}).items()
                        if "AWSCURRENT" in stages
                    ),
                    None,
                )
                if current is None:  # created without a value yet: not a variable
                    continue
                key = entry["Name"][len(self.name_prefix) :]
                if key:
                    found[entry["ARN"]] = (key, current)
            token = page.get("NextToken")
            if not token:
                return found
            kwargs["NextToken"] = token

    def _fetch_values(self, arns: list[str]) -> dict[str, tuple[str, str]]:
        """ARN -> (version id, value) for these secrets, BATCH_SIZE per call."""
        fetched: dict[str, tuple[str, str]] = {}
        for start in range(0, len(arns), BATCH_SIZE):
            chunk = arns[start : start + BATCH_SIZE]
            try:
                answer = self.client.batch_get_secret_value(SecretIdList=chunk)
            except Exception as exc:
                raise _source_error(f"BatchGetSecretValue {self.source_id}", exc) from None
            errors = answer.get("Errors") or []
            if errors:
                first = errors[0]
                raise SourceError(
                    f"BatchGetSecretValue {self.source_id}: {first.get('SecretId')}: "
                    f"{first.get('ErrorCode')}: {first.get('Message', '')}"
                    + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""),
                    kind=str(first.get("ErrorCode") or "BatchError"),
                )
            for value in answer.get("SecretValues", []):
                text = value.get("SecretString")
                if text is None:
                    raise SourceError(
                        f"secret {value.get('Name')} holds binary data, not text", kind="binary"
                    )
                fetched[value["ARN"]] = (value["VersionId"], value_text(text))
        return fetched

    def fetch(self, previous_version: str | None) -> Snapshot | Unchanged:
        listed = self._list()
        version = _combined_version({arn: vid for arn, (_key, vid) in listed.items()})
        if version == previous_version:
            return Unchanged(version)
        stale = [
            arn for arn, (_key, vid) in listed.items() if self._cache.get(arn, ("",))[0] != vid
        ]
        fetched = self._fetch_values(stale)
        cache = {arn: self._cache[arn] for arn in listed if arn in self._cache}
        cache.update(fetched)
        missing = [arn for arn in listed if arn not in cache]
        if missing:
            raise SourceError(
                f"BatchGetSecretValue {self.source_id}: no value for {len(missing)} secret(s)",
                kind="missing_value",
            )
        self._cache = cache
        values = {listed[arn][0]: cache[arn][1] for arn in listed}
        version = _combined_version({arn: cache[arn][0] for arn in listed})
        return Snapshot(version, values)


def _combined_version(versions: dict[str, str]) -> str:
    """One version for a set of secrets: a hash of their sorted (ARN, version id) pairs."""
    digest = hashlib.sha256()
    for arn in sorted(versions):
        digest.update(f"{arn}\0{versions[arn]}\n".encode())
    return f"{len(versions)}:{digest.hexdigest()[:32]}"
