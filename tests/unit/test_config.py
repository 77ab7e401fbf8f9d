"""Settings: environment over TOML over defaults, Airflow names, masked output, docs in step."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from ketch.config import Settings, get_settings


def test_defaults_follow_the_embedded_default(ketch_home: Path) -> None:
    settings = get_settings()
    assert settings.core.executor == "local"
    assert settings.api.host == "127.0.0.1" and settings.api.port == 8080
    assert settings.database_url == f"sqlite:///{ketch_home / 'ketch.db'}"
    assert settings.log_folder == ketch_home / "logs"
    assert settings.scheduler.catchup_by_default is False  # Airflow 3 default


def test_environment_overrides_toml(ketch_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (ketch_home / "ketch.toml").write_text(
        '[core]\nparallelism = 7\ndags_folder = "/srv/dags"\n[api]\nport = 9000\n'
    )
    monkeypatch.setenv("KETCH__CORE__PARALLELISM", "64")
    settings = Settings()
    assert settings.core.parallelism == 64  # env wins
    assert settings.core.dags_folder == Path("/srv/dags")  # from TOML
    assert settings.api.port == 9000


def test_ketch_config_points_at_another_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "elsewhere.toml"
    path.write_text('[database]\nsql_alchemy_conn = "postgresql://u:p@db/ketch"\n')
    monkeypatch.setenv("KETCH_CONFIG", str(path))
    assert Settings().database_url == "postgresql://u:p@db/ketch"


def test_invalid_value_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KETCH__CORE__EXECUTOR", "celery")
    with pytest.raises(ValidationError, match="executor"):
        Settings()


def test_masked_hides_every_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KETCH__DATABASE__SQL_ALCHEMY_CONN", "postgresql://u:hunter2@db/k")
    monkeypatch.setenv("KETCH__CORE__FERNET_KEY", "very-secret-key")
    masked = Settings().masked()
    assert masked["database"]["sql_alchemy_conn"] == "***"
    assert masked["core"]["fernet_key"] == "***"
    assert "hunter2" not in repr(masked) and "very-secret-key" not in repr(masked)


def test_configuration_page_matches_the_model() -> None:
    from ketch.config_docs import render

    page = Path(__file__).parents[2] / "docs" / "configuration.md"
    assert page.read_text() == render(), "docs/configuration.md is stale: run `make docs`"


def test_every_ketch_variable_the_project_names_is_a_setting() -> None:
    """Docs, manifests and code name only real settings (an unknown one is warned about as
    ignored at start): a typo in the docs, or a setting read before it is in the model,
    fails here."""
    import re

    from ketch.config import _SECTIONS

    root = Path(__file__).parents[2]
    files = [root / "README.md", *root.glob("docs/**/*.md"), *root.glob("deploy/**/*")]
    files += [*root.glob("src/**/*.py")]
    placeholders = {"KETCH__SECTION__KEY", "KETCH__SECTION", "KETCH__PARALLELISM"}
    unknown = set()
    for path in (f for f in files if f.is_file()):
        for name in re.findall(r"KETCH__[A-Z0-9_]*[A-Z0-9]", path.read_text(errors="replace")):
            parts = name.removeprefix("KETCH__").lower().split("__")
            known = parts[0] in _SECTIONS and (
                len(parts) == 1 or parts[1] in _SECTIONS[parts[0]].model_fields
            )
            if not known and name not in placeholders:
                unknown.add(f"{name} in {path.relative_to(root)}")
    assert not unknown, sorted(unknown)
