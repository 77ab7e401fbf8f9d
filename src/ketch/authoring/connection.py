"""``Connection``: a connection's fields, Airflow's URI format, and ``Connection.get``.

Task code reads a connection by id through the execution API with the try's token
(never the database)::

    from ketch import Connection

    conn = Connection.get("warehouse")
    conn.host, conn.login, conn.password, conn.extra_dejson, conn.get_uri()

The URI format is Airflow's: ``conn-type://login:password@host:port/schema?extra``,
each part percent-encoded; ``_`` in the type becomes ``-`` in the scheme; extra is
the query string when it is a flat object of strings, else ``__extra__=<json>``;
a host with its own protocol is written ``type://http://host``. This module is
stdlib only: a task try imports it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

EXTRA_KEY = "__extra__"
# The fields of Airflow's JSON export/import format, in its order.
FIELDS = ("conn_type", "description", "host", "login", "password", "schema", "port", "extra")


class ConnectionUriError(ValueError):
    """A connection URI ketch cannot parse."""


def _normalize_conn_type(scheme: str) -> str:
    # As Airflow: postgresql:// is the postgres type, and a scheme cannot hold "_".
    if scheme == "postgresql":
        return "postgres"
    return scheme.replace("-", "_")


@dataclass
class Connection:
    conn_id: str
    conn_type: str
    description: str | None = None
    host: str | None = None
    schema: str | None = None
    login: str | None = None
    password: str | None = None
    port: int | None = None
    extra: str | None = None

    # -- Airflow's URI format --------------------------------------------------------

    @classmethod
    def from_uri(cls, conn_id: str, uri: str, *, description: str | None = None) -> Connection:
        if uri.count("://") > 2:
            raise ConnectionUriError(f"invalid connection URI (too many '://'): {conn_id!r}")
        if "://" not in uri:
            raise ConnectionUriError(f"connection URI of {conn_id!r} has no scheme (type://...)")
        host_with_protocol = uri.count("://") == 2
        scheme = urlsplit(uri).scheme
        if not scheme:
            raise ConnectionUriError(f"connection URI of {conn_id!r} has no scheme")
        rest = uri.replace(f"{scheme}://", "" if host_with_protocol else "//", 1)
        if host_with_protocol:
            head = rest.split("://", 1)[0]
            if "@" in head or ":" in head:
                raise ConnectionUriError(f"invalid connection URI of {conn_id!r}")
        parts = urlsplit(rest)
        try:
            port = parts.port
        except ValueError as exc:
            raise ConnectionUriError(f"invalid port in connection URI of {conn_id!r}") from exc
        hostname = parts.hostname or ""
        if hostname:
            hostname = unquote(hostname)
            if host_with_protocol:
                hostname = f"{parts.scheme}://{hostname}"
        elif host_with_protocol:
            hostname = f"{parts.scheme}://"
        extra = None
        if parts.query:
            query = dict(parse_qsl(parts.query, keep_blank_values=True))
            extra = query[EXTRA_KEY] if EXTRA_KEY in query else json.dumps(query)
        path = parts.path[1:]
        return cls(
            conn_id=conn_id,
            conn_type=_normalize_conn_type(scheme),
            description=description,
            host=hostname or None,
            schema=unquote(path) if path else None,
            login=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            port=port,
            extra=extra,
        )

    def get_uri(self) -> str:
        uri = f"{self.conn_type.lower().replace('_', '-')}://"
        authority = ""
        if self.login is not None:
            authority += quote(self.login, safe="")
        if self.password is not None:
            authority += ":" + quote(self.password, safe="")
        if authority:
            uri += authority + "@"
        host_block = ""
        if self.host:
            if "://" in self.host:
                protocol, host = self.host.split("://", 1)
                host_block += f"{protocol}://" + quote(host, safe="")
            else:
                host_block += quote(self.host, safe="")
        if self.port:
            host_block += f"@:{self.port}" if not host_block and not authority else f":{self.port}"
        if self.schema:
            host_block += f"/{quote(self.schema, safe='')}"
        uri += host_block
        if self.extra:
            extra = self.extra_dejson
            flat = isinstance(extra, dict) and all(isinstance(v, str) for v in extra.values())
            query = urlencode(extra) if flat else urlencode({EXTRA_KEY: self.extra})
            uri += ("?" if self.schema else "/?") + query
        return uri

    # -- fields ----------------------------------------------------------------------

    @property
    def extra_dejson(self) -> dict[str, Any]:
        """The extra field as a dict ({} when empty or not a JSON object)."""
        if not self.extra:
            return {}
        try:
            value = json.loads(self.extra)
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}

    def to_dict(self) -> dict[str, Any]:
        """Airflow's JSON export form (without conn_id)."""
        data = asdict(self)
        return {name: data[name] for name in FIELDS}

    @classmethod
    def from_dict(cls, conn_id: str, data: dict[str, Any]) -> Connection:
        """Airflow's JSON import form; ``extra`` may be a JSON string or an object."""
        unknown = set(data) - set(FIELDS) - {"conn_id", "uri"}
        if unknown:
            raise ValueError(f"connection {conn_id!r}: unknown fields {sorted(unknown)}")
        if data.get("uri"):
            return cls.from_uri(conn_id, str(data["uri"]), description=data.get("description"))
        if not data.get("conn_type"):
            raise ValueError(f"connection {conn_id!r}: conn_type is required")
        extra = data.get("extra")
        if extra is not None and not isinstance(extra, str):
            extra = json.dumps(extra)
        port = data.get("port")
        return cls(
            conn_id=conn_id,
            conn_type=str(data["conn_type"]),
            description=data.get("description"),
            host=data.get("host"),
            schema=data.get("schema"),
            login=data.get("login"),
            password=data.get("password"),
            port=int(port) if port not in (None, "") else None,
            extra=extra,
        )

    # -- task side -------------------------------------------------------------------

    @classmethod
    def get(cls, conn_id: str) -> Connection:
        """The connection, read through the execution API with this try's token.

        Raises ``KeyError`` when there is no such connection. Its password, secret
        extra fields and URI are added to the values hidden from task logs.
        """
        from ketch.worker.client import task_client

        data = task_client().get_connection(conn_id)
        conn = cls.from_dict(conn_id, {k: data.get(k) for k in FIELDS})
        conn._mask_secrets()
        return conn

    def _mask_secrets(self) -> None:
        """Hide from task logs: the password, every string under an extra key that looks
        sensitive (at any depth), and, when there is any of these, the whole URI."""
        from ketch.worker.secrets_mask import mask_secret, secret_strings

        secrets = [self.password] if self.password else []
        if self.extra:
            try:
                extra = json.loads(self.extra)
            except ValueError:
                extra = None
            secrets.extend(secret_strings(extra))
        if secrets:
            secrets.append(self.get_uri())
        for secret in secrets:
            mask_secret(secret)

    def __repr__(self) -> str:  # never print the password
        return f"Connection(conn_id={self.conn_id!r}, conn_type={self.conn_type!r}, host={self.host!r})"
