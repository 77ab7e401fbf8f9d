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
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, SecretStr, model_validator
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
        description="URL task tries use to reach the execution API. Unset: "
        "http://{api.host}:{api.port}/execution, with [api] execution_port instead of [api] port "
        "when it is set.",
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
        description="Longest back-off between retries of a scheduler step that a database "
        "which answers keeps failing (read-only, disk full). A database that cannot be reached "
        "at all is probed every 0.5 s instead, and the scheduler resumes as soon as it answers.",
    )
    lease_ttl: float = Field(
        default=6.0,
        gt=0,
        description="Seconds the active scheduler's lease lasts without a renewal (PostgreSQL). "
        "A standby scheduler takes over once it has expired, so failover takes at most this "
        "plus standby_poll_interval; a scheduler that cannot renew for this long stops "
        "scheduling.",
    )
    lease_renew_interval: float = Field(
        default=1.5,
        gt=0,
        description="Seconds between renewals of the active scheduler's lease (keep it well "
        "under lease_ttl).",
    )
    standby_poll_interval: float = Field(
        default=1.0,
        gt=0,
        description="Seconds between a standby scheduler's attempts to take the lease.",
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
    execution_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="Serve the execution API (task tries) on this second port only, so a "
        "NetworkPolicy can let worker pods reach it and nothing else. Unset: one port for all.",
    )
    metrics_public: bool = Field(
        default=False,
        description="Serve /metrics without authentication (else a token with the `metrics` "
        "scope, or a signed-in admin, is required).",
    )


class ApiAuthSettings(BaseModel):
    jwt_secret: SecretStr | None = Field(
        default=None,
        description="Secret that signs per-try tokens. Unset: generated once into $KETCH_HOME/jwt_secret.",
    )
    jwt_expiration_time: int = Field(
        default=86400, gt=0, description="Seconds a per-try token stays valid."
    )


Role = Literal["viewer", "user", "op", "admin"]


class RoleRule(BaseModel):
    """One ``[auth] role_rules`` entry: an exact email or a whole domain gets a role."""

    email: str | None = None
    domain: str | None = None
    role: Role

    @model_validator(mode="after")
    def _one_subject(self) -> RoleRule:
        if (self.email is None) == (self.domain is None):
            raise ValueError("a role rule names exactly one of email or domain")
        return self


class AuthSettings(BaseModel):
    """Who may use the web server: OpenID Connect sign-in (Google by default), roles, sessions."""

    mode: Literal["auto", "none"] = Field(
        default="auto",
        description="`auto`: sign-in through the identity provider when one is configured, else "
        "only loopback requests are let in (as admin). `none`: no authentication at all (unsafe; "
        "warned about at start).",
    )
    oidc_issuer: str = Field(
        default="https://accounts.google.com",
        description="OpenID Connect issuer URL (discovery at /.well-known/openid-configuration). "
        "`http://` only on a loopback host.",
    )
    oidc_client_id: str | None = Field(
        default=None, description="OAuth client id; with the secret, turns sign-in on."
    )
    oidc_client_secret: SecretStr | None = Field(default=None, description="OAuth client secret.")
    oidc_callback_path: str = Field(
        default="/oauth2callback",
        description="Path of the redirect URI registered at the provider.",
    )
    allowed_domains: list[str] = Field(
        default=[],
        description="Google Workspace domains allowed to sign in: both the `hd` claim and the "
        "email's domain must be in it (a JSON list in the environment variable).",
    )
    role_rules: list[RoleRule] = Field(
        default=[],
        description='Rules giving roles, first match wins, e.g. `[{"email": "lead@corp.com", '
        '"role": "admin"}, {"domain": "corp.com", "role": "viewer"}]`. An email rule admits that '
        "one verified account from any domain.",
    )
    default_role: Role | None = Field(
        default=None,
        description="Role of a signed-in user of an allowed domain that no rule matches "
        "(unset: no access).",
    )
    session_secret: SecretStr | None = Field(
        default=None,
        description="Key that signs session cookies. Unset: generated once into "
        "$KETCH_HOME/session_secret (set it when web replicas do not share a disk).",
    )
    session_idle_timeout: int = Field(
        default=8 * 3600, gt=0, description="Seconds of inactivity after which a session ends."
    )
    session_max_age: int = Field(
        default=7 * 86400, gt=0, description="Seconds after sign-in after which a session ends."
    )
    session_recheck_interval: int = Field(
        default=60,
        gt=0,
        description="Seconds between re-checks of a session's user (disabled, role rules).",
    )
    trusted_proxies: list[str] = Field(
        default=[],
        description="Addresses or CIDR ranges of reverse proxies whose X-Forwarded-Proto/Host "
        "are believed when building the redirect URI.",
    )

    @property
    def oidc_configured(self) -> bool:
        """An identity provider is configured: sign-in is then required on every address."""
        return bool(self.oidc_client_id) and self.oidc_client_secret is not None


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


class AwsSecretsManagerSource(BaseModel):
    """A ``[variables] sync_sources`` entry that reads AWS Secrets Manager.

    Either ``secret_id`` (one secret holding a JSON object: each key becomes a variable),
    or ``name_prefix`` and/or ``tags`` (every matching secret becomes one variable, named
    by the secret name minus the prefix). Region, credentials and retries come from the
    standard boto3 chain unless set here.
    """

    kind: Literal["aws-secrets-manager"]
    id: str | None = None
    secret_id: str | None = None
    name_prefix: str | None = None
    tags: dict[str, str] | None = None
    region: str | None = None
    endpoint_url: str | None = None
    sensitive: bool = True

    @model_validator(mode="after")
    def _one_selector(self) -> AwsSecretsManagerSource:
        if self.secret_id and (self.name_prefix or self.tags):
            raise ValueError("give either secret_id, or name_prefix and/or tags, not both")
        if not (self.secret_id or self.name_prefix or self.tags):
            raise ValueError("an aws-secrets-manager source needs secret_id, name_prefix or tags")
        return self

    @property
    def source_id(self) -> str:
        if self.id:
            return self.id
        if self.secret_id:
            return f"aws-secrets-manager:{self.secret_id}"
        selector = f"prefix={self.name_prefix}" if self.name_prefix else ""
        if self.tags:
            tags = ",".join(f"{k}={v}" for k, v in sorted(self.tags.items()))
            selector = f"{selector};tags={tags}" if selector else f"tags={tags}"
        return f"aws-secrets-manager:{selector}"


class FileSource(BaseModel):
    """A ``[variables] sync_sources`` entry that reads a mounted JSON file (Airflow's
    ``variables.json`` format), reloaded when its content changes."""

    kind: Literal["file"]
    id: str | None = None
    path: Path
    sensitive: bool = True

    @property
    def source_id(self) -> str:
        return self.id or f"file:{self.path}"


SyncSourceSettings = Annotated[AwsSecretsManagerSource | FileSource, Field(discriminator="kind")]


class VariablesSettings(BaseModel):
    sync_sources: list[SyncSourceSettings] = Field(
        default=[],
        description="Sources the scheduler syncs variables from (a JSON list in the environment "
        "variable); see docs/variables.md.",
    )
    sync_interval: float = Field(
        default=30.0, gt=0, description="Seconds between two polls of each sync source."
    )
    conflict_policy: Literal["source_wins", "keep_manual"] = Field(
        default="source_wins",
        description="When a source brings a key that was set by hand: `source_wins` overwrites "
        "it (logged and audited), `keep_manual` keeps the hand-set value.",
    )
    sync_max_backoff: float = Field(
        default=600.0,
        gt=0,
        description="Longest wait before retrying a failing source (the wait doubles per failure).",
    )


class KubernetesSettings(BaseModel):
    """The Kubernetes executor (``[core] executor = "kubernetes"``): one pod per task try."""

    namespace: str = Field(default="default", description="Namespace of the worker pods.")
    pod_template_file: Path | None = Field(
        default=None,
        description="Pod YAML every try starts from; its container named `base` runs the task. "
        "Unset: a minimal pod with one `base` container.",
    )
    worker_container_repository: str = Field(
        default="ketch",
        description="Image repository of the task container (when the template sets none).",
    )
    worker_container_tag: str = Field(
        default="latest",
        description="Image tag of the task container (when the template sets none).",
    )
    worker_service_account_name: str | None = Field(
        default=None, description="Service account of worker pods (when the template sets none)."
    )
    delete_worker_pods: bool = Field(
        default=True, description="Delete a worker pod once its try succeeded."
    )
    delete_worker_pods_on_failure: bool = Field(
        default=False,
        description="Also delete failed worker pods at once (off: keep them for inspection).",
    )
    failed_worker_pod_retention: float = Field(
        default=86400.0,
        ge=0,
        description="Seconds a kept failed pod stays before it is deleted anyway.",
    )
    worker_pods_pending_timeout: float = Field(
        default=300.0,
        gt=0,
        description="A pod Pending this long fails its try with the pod's reason and events.",
    )
    worker_pods_creation_batch_size: int = Field(
        default=16, ge=1, description="Maximum pod creates in flight at once."
    )
    api_qps: float = Field(
        default=100.0,
        gt=0,
        description="Client-side rate limit of Kubernetes API requests per second.",
    )
    api_burst: int = Field(default=200, ge=1, description="Burst allowed above api_qps.")
    in_cluster: bool = Field(
        default=False, description="Use the pod's service account instead of a kubeconfig."
    )
    config_file: Path | None = Field(
        default=None, description="Kubeconfig file. Unset: $KUBECONFIG or ~/.kube/config."
    )
    cluster_context: str | None = Field(default=None, description="Kubeconfig context to use.")
    dags_folder_in_pod: str | None = Field(
        default=None,
        description="The DAGs folder inside worker pods (KETCH_DAGS_FOLDER). Unset: [core] dags_folder.",
    )
    execution_api_server_url_for_pods: str | None = Field(
        default=None,
        description="URL pods use to reach the execution API. Unset: [core] execution_api_server_url.",
    )
    max_failed_before_start_retries: int = Field(
        default=3,
        ge=0,
        description="Tries that fail before the task starts (image pull, admission) that do not use up a retry.",
    )
    reconcile_interval: float = Field(
        default=300.0,
        gt=0,
        description="Seconds between reconciliations with one list call (also done at start-up).",
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
    auth: AuthSettings = AuthSettings()
    logging: LoggingSettings = LoggingSettings()
    variables: VariablesSettings = VariablesSettings()
    kubernetes: KubernetesSettings = KubernetesSettings()

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
        """Where task tries reach the execution API: ``[core] execution_api_server_url``, else
        this machine's web server, on ``[api] execution_port`` when it has its own port."""
        if self.core.execution_api_server_url:
            return self.core.execution_api_server_url.rstrip("/")
        host = "127.0.0.1" if self.api.host in ("0.0.0.0", "::", "") else self.api.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"  # an IPv6 address in a URL
        port = self.api.port if self.api.execution_port is None else self.api.execution_port
        return f"http://{host}:{port}/execution"

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
