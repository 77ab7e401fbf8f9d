"""``Variable``: read a variable from task code, as in Airflow::

    from ketch import Variable

    bucket = Variable.get("bucket")
    cfg = Variable.get("pipeline_config", deserialize_json=True)
    region = Variable.get("region", default="eu-west-1")

A try reads through the execution API with its own token (never the database).
Values read during one try are cached for that try, so a loop calling
``Variable.get`` costs one request per key. The value of a sensitive variable (and,
for a JSON value, each string in it) is added to the values hidden from task logs.
Outside a task try (for example at the top level of a DAG file, while it is parsed)
there is no token: ``get`` returns ``default`` when one is given and raises otherwise.
Stdlib only.
"""

from __future__ import annotations

import json
import threading
from typing import Any

_MISSING: Any = object()


class Variable:
    _cache: dict[str, str] = {}
    _cache_lock = threading.Lock()

    @classmethod
    def get(
        cls,
        key: str,
        default: Any = _MISSING,
        *,
        deserialize_json: bool = False,
        default_var: Any = _MISSING,
    ) -> Any:
        """The value of ``key`` (``deserialize_json``: parsed as JSON).

        ``KeyError`` when the variable does not exist and no default is given.
        ``default_var`` is Airflow's older name of ``default``.
        """
        if default is _MISSING:
            default = default_var
        try:
            raw = cls._fetch(key)
        except KeyError:
            if default is _MISSING:
                raise KeyError(f"Variable {key} does not exist") from None
            return default
        return json.loads(raw) if deserialize_json else raw

    @classmethod
    def _fetch(cls, key: str) -> str:
        with cls._cache_lock:
            if key in cls._cache:
                return cls._cache[key]
        import os

        from ketch.worker.client import ENV_TOKEN, task_client
        from ketch.worker.secrets_mask import looks_sensitive, mask_secret, secret_strings

        if not os.environ.get(ENV_TOKEN):
            raise KeyError(key)  # not in a task try: nothing to read
        data = task_client().get_variable(key)
        value = str(data["value"])
        if data.get("is_sensitive") or looks_sensitive(key):
            # The value and, when it is a JSON object or list, each string in it (what
            # ``deserialize_json=True`` gives, and the task may print one field).
            for secret in secret_strings(value, all_leaves=True):
                mask_secret(secret)
        with cls._cache_lock:
            cls._cache[key] = value
        return value

    @classmethod
    def clear_cache(cls) -> None:
        with cls._cache_lock:
            cls._cache.clear()
