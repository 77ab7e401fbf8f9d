"""One typed settings model for every ketch process.

Sources, highest priority first:

1. environment variables ``KETCH__SECTION__KEY`` (for example ``KETCH__CORE__PARALLELISM=64``);
2. a TOML file: ``$KETCH_CONFIG`` if set, else ``$KETCH_HOME/ketch.toml`` if it exists;
3. the defaults below.

Section and key names follow Airflow's where Airflow has the same setting, so an
``AIRFLOW__CORE__PARALLELISM`` in an existing ConfigMap carries over by changing
the prefix. ``KETCH_HOME`` (default ``~/ketch``) holds the SQLite file and local logs.

Every field is documented in ``docs/configuration.md``; a test keeps that table
and this model in step.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


def ketch_home() -> Path:
    """The folder for the embedded default's state (SQLite file, logs)."""
    return Path(os.environ.get("KETCH_HOME", "~/ketch")).expanduser()


def config_file() -> Path:
    explicit = os.environ.get("KETCH_CONFIG")
    return Path(explicit).expanduser() if explicit else ketch_home() / "ketch.toml"


class CoreSettings(BaseModel):
    dags_folder: Path | None = Field(
        default=None,
        description="Folder of DAG files. Unset: `ketch standalone` uses the bundled example DAGs.",
    )
    load_examples: bool = Field(
        default=False, description="Also load the bundled example DAGs next to dags_folder."
    )
    executor: Literal["local", "kubernetes"] = Field(
        default="local",
        description="Where task tries run: `local` subprocesses or `kubernetes` pods.",
    )
    parallelism: int = Field(
        default=32, ge=1, description="Maximum task tries queued or running at once, over all DAGs."
    )
    max_active_tasks_per_dag: int = Field(
        default=16, ge=1, description="Default for a DAG's max_active_tasks."
    )
    max_active_runs_per_dag: int = Field(
        default=16, ge=1, description="Default for a DAG's max_active_runs."
    )
    dags_are_paused_at_creation: bool = Field(
        default=True,
        description="New DAGs start paused unless the DAG sets is_paused_upon_creation.",
    )
    default_task_retries: int = Field(default=0, ge=0, description="Default retries of a task.")
    default_task_retry_delay: float = Field(
        default=300.0, ge=0, description="Default seconds between retries."
    )
    max_task_retry_delay: float = Field(
        default=86400.0, ge=0, description="Upper bound of a retry delay with exponential backoff."
    )
    default_task_execution_timeout: float | None = Field(
        default=None, description="Default execution_timeout of a task in seconds (unset: none)."
    )
    dagbag_import_timeout: float = Field(
        default=30.0, gt=0, description="Seconds a DAG file may take to import before it fails."
    )
    max_xcom_size: int = Field(
        default=1_048_576,
        ge=1,
        description="Maximum size in bytes of a task's JSON-serialised return value.",
    )
    fernet_key: SecretStr | None = Field(
        default=None, description="Key that encrypts variables and connections at rest."
    )
    execution_api_server_url: str | None = Field(
        default=None,
        description="URL task tries use to reach the execution API. Unset: http://{api.host}:{api.port}/execution.",
    )


class DatabaseSettings(BaseModel):
    sql_alchemy_conn: SecretStr | None = Field(
        default=None,
        description="SQLAlchemy URL of the metadata database. Unset: SQLite at $KETCH_HOME/ketch.db.",
    )
    sql_alchemy_pool_size: int = Field(default=5, ge=1, description="Connection pool size.")
    sql_alchemy_max_overflow: int = Field(default=10, ge=0, description="Pool overflow.")
    connect_timeout: float = Field(
        default=10.0, gt=0, description="Seconds to wait when connecting to the database."
    )


class SchedulerSettings(BaseModel):
    catchup_by_default: bool = Field(
        default=False, description="Default for a DAG's catchup (False since Airflow 3)."
    )
    create_cron_data_intervals: bool = Field(
        default=False,
        description="Cron schedules get data intervals (CronDataIntervalTimetable) instead of "
        "trigger semantics (CronTriggerTimetable, the Airflow 3 default).",
    )
    create_delta_data_intervals: bool = Field(
        default=False,
        description="timedelta schedules get data intervals (DeltaDataIntervalTimetable) instead "
        "of trigger semantics (DeltaTriggerTimetable).",
    )
    scheduler_idle_sleep_time: float = Field(
        default=1.0,
        gt=0,
        description="Seconds the scheduling loop waits for an event before it looks at the database anyway.",
    )
    task_instance_heartbeat_sec: float = Field(
        default=5.0, gt=0, description="Seconds between heartbeats of a running task try."
    )
    task_instance_heartbeat_timeout: float = Field(
        default=300.0,
        gt=0,
        description="A running try with no heartbeat for this long is a zombie: failed or retried.",
    )
    task_instance_heartbeat_timeout_detection_interval: float = Field(
        default=10.0, gt=0, description="Seconds between zombie checks."
    )
    task_queued_timeout: float = Field(
        default=600.0,
        gt=0,
        description="A try queued this long without starting is failed or retried.",
    )
    db_retry_max_interval: float = Field(
        default=30.0,
        gt=0,
        description="Longest back-off between attempts while the database is unreachable.",
    )


class DagProcessorSettings(BaseModel):
    refresh_interval: float = Field(
        default=300.0,
        gt=0,
        description="Seconds between full rescans of the DAGs folder (changes are also watched).",
    )
    min_file_process_interval: float = Field(
        default=30.0, ge=0, description="A file is re-parsed at least this often."
    )


class ApiSettings(BaseModel):
    host: str = Field(default="127.0.0.1", description="Address the web server binds.")
    port: int = Field(default=8080, ge=0, le=65535, description="Port the web server binds.")
    base_url: str | None = Field(
        default=None,
        description="External URL of the web server (for links). Unset: from host and port.",
    )


class ApiAuthSettings(BaseModel):
    jwt_secret: SecretStr | None = Field(
        default=None,
        description="Secret that signs per-try tokens. Unset: generated once into $KETCH_HOME/jwt_secret.",
    )
    jwt_expiration_time: int = Field(
        default=86400, gt=0, description="Seconds a per-try token stays valid."
    )


class LoggingSettings(BaseModel):
    base_log_folder: Path | None = Field(
        default=None, description="Folder of per-try log files. Unset: $KETCH_HOME/logs."
    )
    logging_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Level of ketch's own log messages."
    )
    remote_logging: bool = Field(
        default=False, description="Archive try logs to remote_base_log_folder."
    )
    remote_base_log_folder: str | None = Field(
        default=None, description="Archive location, for example s3://bucket/logs."
    )


class Settings(BaseSettings):
    """Every setting of ketch, grouped in Airflow's sections."""

    model_config = SettingsConfigDict(
        env_prefix="KETCH__",
        env_nested_delimiter="__",
        case_sensitive=False,
        extra="ignore",
    )

    core: CoreSettings = CoreSettings()
    database: DatabaseSettings = DatabaseSettings()
    scheduler: SchedulerSettings = SchedulerSettings()
    dag_processor: DagProcessorSettings = DagProcessorSettings()
    api: ApiSettings = ApiSettings()
    api_auth: ApiAuthSettings = ApiAuthSettings()
    logging: LoggingSettings = LoggingSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = config_file()
        if path.is_file():
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    # Derived values: one place decides each default that depends on KETCH_HOME.

    @property
    def home(self) -> Path:
        return ketch_home()

    @property
    def database_url(self) -> str:
        if self.database.sql_alchemy_conn is not None:
            return self.database.sql_alchemy_conn.get_secret_value()
        return f"sqlite:///{self.home / 'ketch.db'}"

    @property
    def log_folder(self) -> Path:
        return (self.logging.base_log_folder or self.home / "logs").expanduser()

    @property
    def execution_api_url(self) -> str:
        if self.core.execution_api_server_url:
            return self.core.execution_api_server_url.rstrip("/")
        host = "127.0.0.1" if self.api.host in ("0.0.0.0", "::", "") else self.api.host
        return f"http://{host}:{self.api.port}/execution"

    def masked(self) -> dict[str, Any]:
        """The settings as plain data with every secret replaced by ``***`` (for `config show`)."""
        data = self.model_dump(mode="json")
        for section_name, section in self:
            if not isinstance(section, BaseModel):
                continue
            for key, value in section:
                if isinstance(value, SecretStr):
                    data[section_name][key] = "***"
        return data


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once. Tests call ``get_settings.cache_clear()``."""
    return Settings()
