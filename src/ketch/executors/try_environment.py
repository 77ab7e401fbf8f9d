"""The environment a try starts from: an allow-list, never the scheduler's.

Its own module because more than the local executor needs it (the DAG processor's parse
children get it too) and because it is a security boundary worth reading on its own: what
a try needs to run and reach the execution API, the names or patterns listed in ``[core]
task_env_passthrough``, and never a ``KETCH_*`` setting or a value the scheduler holds as
a secret (database URL, Fernet key, signing keys).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase
from urllib.parse import urlsplit

from pydantic import BaseModel, SecretStr

from ketch.authoring._defaults import PARSE_DEFAULTS_ENV, defaults_from_settings
from ketch.config import Settings
from ketch.logs.pump.config import CONFIG_ENV as PUMP_CONFIG_ENV
from ketch.logs.pump.config import PumpConfig
from ketch.worker.client import ENV_RETRY_TIMEOUT
from ketch.worker.secrets_mask import looks_sensitive

# What every try gets from the scheduler's environment when set: names, or patterns
# (fnmatch, case-sensitive). Everything else stays with the scheduler.
TRY_ENV_ALLOWED = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LANGUAGE",
    "LC_*",
    "TZ",
    "TMPDIR",
    "PYTHONPATH",
    "VIRTUAL_ENV",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    ENV_RETRY_TIMEOUT,
)
# Never passed, even when asked for: settings (the database URL, keys...), the remote
# CLI's API token, and where the configuration and generated keys are.
TRY_ENV_NEVER = ("KETCH__*", "KETCH_API_TOKEN", "KETCH_CONFIG", "KETCH_HOME")
# Keys ketch generates into $KETCH_HOME when they are not configured.
_SECRET_FILES = ("fernet_key", "jwt_secret", "session_secret")
# A secret shorter than this is not looked for inside other values (only equality).
_MIN_SECRET_LENGTH = 8
_GLOB_CHARS = frozenset("*?[")


def _secret_strings(value: object) -> Iterable[str]:
    """Every SecretStr value in a settings model, recursively."""
    if isinstance(value, SecretStr):
        yield value.get_secret_value()
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _secret_strings(getattr(value, name))
    elif isinstance(value, dict):
        for item in value.values():
            yield from _secret_strings(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _secret_strings(item)


def scheduler_secrets(settings: Settings) -> set[str]:
    """The secret values this scheduler holds: every secret setting (each Fernet key of
    a list, the database URL and its password) and the keys generated into $KETCH_HOME."""
    found: set[str] = set()
    for secret in _secret_strings(settings):
        found.add(secret)
        found.update(part.strip() for part in secret.split(","))
        with contextlib.suppress(ValueError):
            password = urlsplit(secret).password
            if password:
                found.add(password)
    for name in _SECRET_FILES:
        with contextlib.suppress(OSError, UnicodeDecodeError):
            found.add((settings.home / name).read_text().strip())
    return {s for s in found if s}


def _holds_secret(value: str, secrets: set[str]) -> bool:
    return any(
        value == secret or (len(secret) >= _MIN_SECRET_LENGTH and secret in value)
        for secret in secrets
    )


def task_env_passthrough(settings: Settings) -> list[str]:
    """``[core] task_env_passthrough``: more names (or fnmatch patterns) a try gets."""
    return [name.strip() for name in settings.core.task_env_passthrough if name.strip()]


def try_environment(
    settings: Settings, environ: Mapping[str, str] | None = None
) -> tuple[dict[str, str], list[str]]:
    """The environment every try starts from (before its token and the API URL), and the
    names refused although ``[core] task_env_passthrough`` asked for them.

    A name is passed when it is in :data:`TRY_ENV_ALLOWED`, named exactly in the
    passthrough list, or matched by a passthrough pattern and not sensitive-looking
    (``*PASSWORD*``, ``*SECRET*``, ``*TOKEN*``...: name those exactly). Never passed:
    :data:`TRY_ENV_NEVER` (``KETCH__*`` settings, the CLI's API token, the locations of
    the configuration and of the generated keys) and any variable whose value holds a
    secret of the scheduler's.
    """
    source = os.environ if environ is None else environ
    passthrough = task_env_passthrough(settings)
    exact = {p for p in passthrough if not _GLOB_CHARS & set(p)}
    patterns = [p for p in passthrough if _GLOB_CHARS & set(p)]
    secrets = scheduler_secrets(settings)
    env: dict[str, str] = {}
    refused: list[str] = []
    for name, value in source.items():
        builtin = any(fnmatchcase(name, allowed) for allowed in TRY_ENV_ALLOWED)
        asked = name in exact or (
            any(fnmatchcase(name, p) for p in patterns) and not looks_sensitive(name)
        )
        if not (builtin or asked):
            continue
        if any(fnmatchcase(name, never) for never in TRY_ENV_NEVER) or _holds_secret(
            value, secrets
        ):
            if asked:
                refused.append(name)
            continue
        env[name] = value
    # The DAG defaults the scheduler parsed with: the try needs neither the settings
    # module nor the configuration they came from.
    env[PARSE_DEFAULTS_ENV] = json.dumps(defaults_from_settings(settings))
    if not settings.logging.coalesce_print_bursts:
        env[PUMP_CONFIG_ENV] = PumpConfig(coalesce=False).to_env()
    return env, sorted(refused)
