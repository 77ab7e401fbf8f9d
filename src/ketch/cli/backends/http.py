"""The HTTP client of the remote backend: ``/api/v1`` of a ketch web server over httpx.

Each failure is one line for the user: 401 and 403 say what is wrong with the token,
404/409/422 (and 400, 503) give the API's ``detail`` worded as the database backend
words the same refusal, and a server that cannot be reached names ``KETCH_API_URL``.
The token is sent as ``Authorization: Bearer`` and never printed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import click
import httpx

from ketch.cli._common import CliError
from ketch.cli.backends import RemoteTarget, Row

PAGE_SIZE = 1000  # the REST API's largest page
NOT_AUTHENTICATED = "not authenticated: KETCH_API_TOKEN missing, expired or revoked"
_ROLE_REFUSAL = re.compile(
    r"has role (?P<role>\w+); (?P<method>[A-Z]+) (?P<path>\S+) needs (?P<needed>\w+)"
)
_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
# A followed log gets a keep-alive comment every 15 s: a minute of silence is a loss.
_STREAM_TIMEOUT = httpx.Timeout(30.0, connect=10.0, read=60.0)


def segment(value: str | int) -> str:
    """One path segment (a DAG id, run id, key...) with every reserved character escaped."""
    return quote(str(value), safe="")


class ApiClient:
    """Requests to one server; closed with the click context of the command."""

    def __init__(self, target: RemoteTarget) -> None:
        self.target = target
        headers = {"Accept": "application/json", "User-Agent": "ketch-cli"}
        if target.token:
            headers["Authorization"] = f"Bearer {target.token}"
        self._client = httpx.Client(
            base_url=f"{target.url}/api/v1",
            headers=headers,
            timeout=_TIMEOUT,
            follow_redirects=False,
        )
        ctx = click.get_current_context(silent=True)
        if ctx is not None:
            ctx.call_on_close(self._client.close)

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        body: Any = None,
        allow: tuple[int, ...] = (),
    ) -> httpx.Response:
        """The response; a status of 300 or more not in ``allow`` is a :class:`CliError`."""
        query = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            response = self._client.request(method, path, params=query, json=body)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        if response.status_code >= 300 and response.status_code not in allow:
            raise self._error(response)
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError as exc:
            raise CliError(
                f"KETCH_API_URL={self.target.shown_url} did not answer {method} /api/v1{path} "
                "with JSON: is it a ketch web server?"
            ) from exc

    def all(
        self,
        path: str,
        key: str,
        params: dict[str, Any] | None = None,
        *,
        limit: int | None = None,
    ) -> list[Row]:
        """Every entry of a paged collection (or the first ``limit``)."""
        rows: list[Row] = []
        while limit is None or len(rows) < limit:
            size = PAGE_SIZE if limit is None else min(PAGE_SIZE, limit - len(rows))
            page = self.json(
                "GET", path, params={**(params or {}), "limit": size, "offset": len(rows)}
            )
            rows.extend(page[key])
            if not page[key] or len(rows) >= page["total_entries"]:
                break
        return rows

    def events(self, path: str, params: dict[str, Any]) -> Iterator[tuple[str, str]]:
        """The (event, data) pairs of a Server-Sent Events response, as they arrive."""
        headers = {"Accept": "text/event-stream"}
        try:
            with self._client.stream(
                "GET", path, params=params, headers=headers, timeout=_STREAM_TIMEOUT
            ) as response:
                if response.status_code >= 300:
                    response.read()
                    raise self._error(response)
                yield from server_sent_events(response.iter_lines())
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc

    def _unreachable(self, exc: httpx.TransportError) -> CliError:
        if isinstance(exc, httpx.TimeoutException):
            why = "timed out"
        else:
            why = str(exc) or type(exc).__name__
        return CliError(f"cannot reach KETCH_API_URL={self.target.shown_url} ({why})")

    def _error(self, response: httpx.Response) -> CliError:
        status = response.status_code
        detail = _detail(response)
        if status == 401:
            reason = detail.removeprefix("not authenticated: ")
            return CliError(NOT_AUTHENTICATED + (f" ({reason})" if reason else ""))
        if status == 403:
            refused = _ROLE_REFUSAL.search(detail)
            if refused:
                return CliError(
                    f"forbidden: your token's role {refused['role']} may not "
                    f"{refused['method']} {refused['path']} (needs {refused['needed']})"
                )
            return CliError(detail if detail.startswith("forbidden") else f"forbidden: {detail}")
        if 300 <= status < 400:
            return CliError(
                f"KETCH_API_URL={self.target.shown_url} answered {status} (a redirect to "
                f"{response.headers.get('location', '?')}): is it the ketch web server's URL?"
            )
        if status in (400, 404, 409, 422, 503) and detail:
            return CliError(detail)
        request = response.request
        return CliError(
            f"{request.method} {request.url.path} failed: HTTP {status}"
            + (f": {detail}" if detail else "")
        )


def _detail(response: httpx.Response) -> str:
    """The error body as one line: FastAPI's ``detail`` (a message or validation errors)."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        text = response.text.strip()
        return text.splitlines()[0][:200] if text else ""
    if isinstance(detail, list):
        return "; ".join(_validation_message(e) for e in detail if isinstance(e, dict))
    return "" if detail is None else str(detail)


def _validation_message(error: dict[str, Any]) -> str:
    """One 422 entry, worded as the database backend words the same refusal
    (``field: message``, or ``param 'n': message`` for a DAG param)."""
    loc = [str(p) for p in error.get("loc", [])]
    message = str(error.get("msg", "invalid"))
    if loc[:1] in (["body"], ["query"], ["path"]):
        loc = loc[1:]
    if error.get("type") == "param_validation" and len(loc) >= 2 and loc[0] == "conf":
        return f"param {loc[1]!r}: {message}"
    return f"{'.'.join(loc)}: {message}" if loc else message


def server_sent_events(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    """(event, data) pairs of a ``text/event-stream``: ``data:`` lines joined by newlines,
    a blank line ends an event, comments (``: ping``) are skipped."""
    event, data = "message", list[str]()
    for line in lines:
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "message", list[str]()
        elif not line.startswith(":"):
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                event = value
            elif field == "data":
                data.append(value)
    if data:
        yield event, "\n".join(data)
