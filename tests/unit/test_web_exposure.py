"""What the commands that start the web server bind, and what they refuse to.

``ketch web --host 0.0.0.0`` without an identity provider exits with one line (no
traceback) before binding; with ``KETCH__AUTH__MODE=none`` it starts, warning loudly.
The apps get the settings of the address really bound (the auth layer decides the
cookie's ``Secure`` flag from it), and tries are pointed at the execution port.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from ketch import standalone
from ketch.config import Settings
from tests.support.postgres import free_port


def ketch_env(home: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KETCH")}
    env.update({"KETCH_HOME": str(home), "PYTHONUNBUFFERED": "1", **settings})
    return env


def test_web_on_the_network_without_sign_in_exits_with_one_line(ketch_home: Path) -> None:
    port = free_port()
    result = subprocess.run(
        [sys.executable, "-m", "ketch", "web", "--host", "0.0.0.0", "--port", str(port)],
        env=ketch_env(ketch_home),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("ketch: refusing to serve 0.0.0.0 without sign-in: "), lines
    assert "KETCH__AUTH__OIDC_CLIENT_ID" in lines[-1]
    assert not [line for line in lines if line.startswith("ketch:")][:-1], lines  # one line


def test_web_on_the_network_with_auth_mode_none_starts_and_warns(
    ketch_home: Path, tmp_path: Path
) -> None:
    port, execution_port = free_port(), free_port()
    out = tmp_path / "web.out"
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ketch", "web", "--host", "0.0.0.0", "--port", str(port)],
            env=ketch_env(
                ketch_home,
                KETCH__AUTH__MODE="none",
                KETCH__API__EXECUTION_PORT=str(execution_port),
            ),
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, out.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/v1/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, out.read_text()
            time.sleep(0.1)
        heartbeat = httpx.post(f"http://127.0.0.1:{execution_port}/execution/try/heartbeat")
        assert heartbeat.status_code == 401  # the execution API, on its own port
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    output = out.read_text()
    assert code == 0, output
    assert "AUTHENTICATION IS OFF" in output and "WARNING" in output
    assert f"execution API on port {execution_port}" in output
    assert "Traceback" not in output


# -- in process: which settings the apps get ------------------------------------------------


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Run ``run_web`` without serving: record the apps built and the servers' binds."""
    import ketch.api.app
    import ketch.api.execution_app
    import ketch.logging_setup

    seen: dict[str, Any] = {}

    def fake_create_app(settings: Settings, *, include_execution: bool = True) -> str:
        seen["main"] = (settings, include_execution)
        return "main-app"

    def fake_execution_app(settings: Settings) -> str:
        seen["execution"] = settings
        return "execution-app"

    def fake_run(self: standalone.WebServers) -> None:
        seen["binds"] = [(s.config.app, s.config.host, s.config.port) for s in self.servers]

    monkeypatch.setattr(ketch.api.app, "create_app", fake_create_app)
    monkeypatch.setattr(ketch.api.execution_app, "create_execution_app", fake_execution_app)
    monkeypatch.setattr(standalone.WebServers, "run", fake_run)
    monkeypatch.setattr(standalone, "_install_stop_handlers", lambda _on_signal: None)
    monkeypatch.setattr(ketch.logging_setup, "configure_logging", lambda _settings: None)
    return seen


def test_the_app_gets_the_host_and_port_really_bound(built: dict[str, Any]) -> None:
    settings = Settings(auth={"mode": "none"})
    standalone.run_web(settings, host="0.0.0.0", port=9999)
    app_settings, include_execution = built["main"]
    assert (app_settings.api.host, app_settings.api.port) == ("0.0.0.0", 9999)
    assert include_execution is True and "execution" not in built
    assert built["binds"] == [("main-app", "0.0.0.0", 9999)]
    assert settings.api.host == "127.0.0.1"  # the caller's settings are not changed


def test_a_separate_execution_port_gets_a_server_of_its_own(built: dict[str, Any]) -> None:
    settings = Settings(api={"port": 8080, "execution_port": 8081})
    standalone.run_web(settings, host="127.0.0.2")
    app_settings, include_execution = built["main"]
    assert include_execution is False
    assert app_settings.api.host == built["execution"].api.host == "127.0.0.2"
    assert built["binds"] == [("main-app", "127.0.0.2", 8080), ("execution-app", "127.0.0.2", 8081)]


def test_the_same_port_twice_is_one_server(built: dict[str, Any]) -> None:
    standalone.run_web(Settings(api={"port": 8080, "execution_port": 8080}))
    assert built["main"][1] is True and "execution" not in built
    assert built["binds"] == [("main-app", "127.0.0.1", 8080)]


def test_the_exposure_check_runs_before_any_app_is_built(built: dict[str, Any]) -> None:
    with pytest.raises(SystemExit, match=r"^ketch: refusing to serve 10\.0\.0\.5 without sign-in"):
        standalone.run_web(Settings(), host="10.0.0.5")
    assert built == {}


@pytest.mark.parametrize(
    ("api", "url"),
    [
        ({}, "http://127.0.0.1:8080/execution"),
        ({"execution_port": 8081}, "http://127.0.0.1:8081/execution"),
        (
            {"host": "0.0.0.0", "port": 9000, "execution_port": 9001},
            "http://127.0.0.1:9001/execution",
        ),
        ({"host": "::1", "execution_port": 8081}, "http://[::1]:8081/execution"),
    ],
)
def test_tries_are_pointed_at_the_execution_port(api: dict[str, Any], url: str) -> None:
    assert Settings(api=api).execution_api_url == url
    configured = Settings(api=api, core={"execution_api_server_url": "http://web:8081/execution/"})
    assert configured.execution_api_url == "http://web:8081/execution"
