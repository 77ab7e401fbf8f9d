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

:func:`load_settings` (behind :func:`get_settings`) turns what a user got wrong into
:class:`SettingsError`, one line per problem naming where the value came from (the
environment variable, or the TOML file and line), and warns once about unknown
``KETCH__*`` variables and TOML keys with the nearest valid name.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
import tomllib
import types
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)
from pydantic_settings import SettingsError as _SourceError

log = logging.getLogger("ketch.config")


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
    max_consecutive_failed_dag_runs_per_dag: int = Field(
        default=0,
        ge=0,
        description="Pause a DAG once its last N runs failed (0: never); a DAG's "
        "max_consecutive_failed_dag_runs overrides it.",
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
    airflow_compat: bool = Field(
        default=False,
        description="Let DAG files written for Airflow 2.x/3.x import unchanged: `import airflow...` "
        "resolves to ketch's objects for the common subset (docs/airflow-compat.md), anything else "
        "is an import error saying what to use instead, and the DAG processor also parses files "
        "that mention `airflow`. Never shadows a real Airflow installed in the same environment.",
    )
    max_map_length: int = Field(
        default=1024,
        ge=0,
        description=(
            "Most task instances one mapped task may expand to (Airflow's "
            "`[core] max_map_length`); a longer expansion fails the task."
        ),
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
    task_env_passthrough: list[str] = Field(
        default=[],
        description="Environment variables a local task try gets from the scheduler's besides "
        "the minimum it needs: exact names, or fnmatch patterns such as `DBT_*` that never match "
        "sensitive-looking names (`*SECRET*`, `*TOKEN*`...: name those exactly). ketch settings "
        "and values holding a scheduler secret are never passed. A JSON list in the environment "
        "variable.",
    )


# The URL schemes (SQLAlchemy drivernames) ketch ships drivers for; plain postgresql
# means psycopg 3 (see ketch.db.engine).
DATABASE_SCHEMES = ("sqlite", "sqlite+pysqlite", "postgresql", "postgresql+psycopg")


def database_url_problem(url: str) -> str | None:
    """Why ``url`` cannot be ketch's database (one line, never the URL itself: it may hold
    a password), or None. A string check: settings must not import SQLAlchemy."""
    scheme, sep, _ = url.partition("://")
    works = "ketch works with sqlite:///PATH and postgresql://USER:PASSWORD@HOST/DB (postgresql+psycopg)"
    if not sep:
        return f"not a database URL: {works}"
    if scheme in DATABASE_SCHEMES:
        return None
    shown = repr(scheme) if re.fullmatch(r"[A-Za-z0-9+._-]{1,40}", scheme) else "in the URL"
    close = difflib.get_close_matches(scheme.lower(), [*DATABASE_SCHEMES, "postgres"], n=1)
    hint = ""
    if close:
        hint = f" (did you mean {'postgresql' if close[0] == 'postgres' else close[0]}?)"
    return f"unknown database URL scheme {shown}{hint}: {works}"


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

    @field_validator("sql_alchemy_conn")
    @classmethod
    def _known_scheme(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and (problem := database_url_problem(value.get_secret_value())):
            raise ValueError(problem)
        return value


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
        default=None,
        description="Archive location when remote_logging is on: s3://bucket/prefix. "
        "Off: the archive is base_log_folder itself.",
    )
    remote_log_conn_id: str | None = Field(
        default=None,
        description="A ketch connection (type aws) whose login/password are the access "
        "key id/secret and whose extra may set region_name, endpoint_url and "
        "aws_session_token. Unset: the boto3 credential chain (IRSA, pod identity, env).",
    )
    s3_endpoint_url: str | None = Field(
        default=None,
        description="S3-compatible endpoint. Unset: boto3's AWS_ENDPOINT_URL_S3 / "
        "AWS_ENDPOINT_URL, else AWS.",
    )
    s3_region: str | None = Field(
        default=None, description="Region of the log bucket. Unset: the boto3 chain."
    )
    encrypt_s3_logs: bool = Field(
        default=False,
        description="Server-side encryption of archived logs: SSE-S3 (AES256), or SSE-KMS "
        "when s3_kms_key_id is set.",
    )
    s3_kms_key_id: str | None = Field(
        default=None, description="KMS key id or ARN for SSE-KMS (with encrypt_s3_logs)."
    )
    chunk_interval_seconds: float = Field(
        default=5.0,
        gt=0,
        description="A running try ships its new log bytes to the archive at least this "
        "often (when there are any).",
    )
    chunk_size_kib: int = Field(
        default=1024,
        gt=0,
        description="... or as soon as this many new KiB are waiting, whichever is first.",
    )
    final_flush_timeout: float = Field(
        default=30.0,
        gt=0,
        description="Seconds a try spends shipping its last chunk at exit before it leaves "
        "the rest to the scheduler's rescue.",
    )
    json_format: bool = Field(
        default=False,
        description="Write stdout lines as JSON (a try's lines with dag_id, run_id, task_id, "
        "try_number; the scheduler's and web's own log) for collectors such as Fluent Bit "
        "or Loki. The archived log stays plain text.",
    )
    coalesce_print_bursts: bool = Field(
        default=True,
        description="During a burst of prints (over ~2,000 writes/s) a try's stdout and "
        "stderr are block buffered and flushed every 25 ms, so printing 100k lines costs "
        "a fraction of one pipe write per line; a try SIGKILLed in the middle of a burst "
        "can lose the prints of its last 25 ms. false: every line is written at once, as "
        "in Airflow.",
    )
    log_retention_days: int = Field(
        default=0,
        ge=0,
        description="Delete archived and local try logs older than this many days "
        "(0: keep them). An S3 lifecycle rule is the alternative for S3.",
    )

    @model_validator(mode="after")
    def _remote_archive(self) -> LoggingSettings:
        if not self.remote_logging:
            return self
        folder = self.remote_base_log_folder or ""
        if not folder.startswith("s3://") or not folder[5:].split("/", 1)[0]:
            raise ValueError(
                "remote_logging needs remote_base_log_folder = 's3://bucket[/prefix]'"
                f" (got {folder!r})"
            )
        return self


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
        description="Tries of a task instance that fail before the task starts (image pull, admission) that do not use up a retry, counted from its try history.",
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
    return load_settings()


# --- errors a user can act on ------------------------------------------------------------------


class SettingsError(ValueError):
    """Settings that cannot be used. Each problem is one line that names where the value
    came from: ``KETCH__CORE__PARALLELISM=abc: [core] parallelism: ...`` or
    ``/home/u/ketch/ketch.toml line 3: [core] parallelism = "abc": ...``."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


def load_settings() -> Settings:
    """``Settings()``, with one-line errors (:class:`SettingsError`) instead of pydantic's
    and tomllib's, and one warning per unknown ``KETCH__*`` variable or TOML key."""
    _warn_unknown_environment()
    path, text, data = _read_config_file()
    _warn_unknown_toml(path, text, data)
    _check_environment_json()
    try:
        return Settings()
    except ValidationError as exc:
        problems = [_describe(error, path, text, data) for error in exc.errors()]
        # Not chained: pydantic's message holds the input, a database URL with its password.
        raise SettingsError(list(dict.fromkeys(problems))) from None
    except _SourceError as exc:  # a source could not parse a value (checked above; a fallback)
        raise SettingsError([str(exc)]) from exc


def _section_models() -> dict[str, type[BaseModel]]:
    models = {}
    for name, field in Settings.model_fields.items():
        assert isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
        models[name] = field.annotation
    return models


_SECTIONS = _section_models()
# Discriminator values of [variables] sync_sources: pydantic puts them in an error's location.
_UNION_TAGS = {
    tag
    for model in (AwsSecretsManagerSource, FileSource)
    for tag in get_args(model.model_fields["kind"].annotation)
}
_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning("%s", message)


def _field(section: str, key: str | None) -> Any:
    model = _SECTIONS.get(section.lower())
    return model.model_fields.get(key.lower()) if model is not None and key else None


def _types_in(annotation: Any) -> list[Any]:
    """The types an annotation allows: ``SecretStr | None`` -> [SecretStr, NoneType]."""
    if get_origin(annotation) is Annotated:
        return _types_in(get_args(annotation)[0])
    if get_origin(annotation) in (Union, types.UnionType):
        return [t for arg in get_args(annotation) for t in _types_in(arg)]
    return [annotation]


def _is_secret(section: str, key: str | None) -> bool:
    field = _field(section, key)
    return field is not None and SecretStr in _types_in(field.annotation)


def _short(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read_config_file() -> tuple[Path, str, dict[str, Any]]:
    """The TOML file's path, text and data (empty when there is none); a file that cannot be
    read or parsed is a one-line SettingsError with its line and column."""
    path = config_file()
    explicit = os.environ.get("KETCH_CONFIG")
    if not path.is_file():
        if explicit:
            raise SettingsError([f"KETCH_CONFIG={explicit}: no such file"])
        return path, "", {}
    try:
        text = path.read_bytes().decode()
    except OSError as exc:
        raise SettingsError([f"{path}: cannot read the file: {exc.strerror or exc}"]) from exc
    except UnicodeDecodeError as exc:
        raise SettingsError([f"{path}: not a TOML file (TOML is UTF-8 text)"]) from exc
    try:
        return path, text, tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        found = re.search(r" \(at line (\d+), column (\d+)\)$", message)
        if found:
            where = f"{path} line {found[1]}, column {found[2]}"
            message = message[: found.start()]
        elif message.endswith(" (at end of document)"):
            where, message = f"{path} at the end", message.removesuffix(" (at end of document)")
        else:
            where = str(path)
        raise SettingsError([f"{where}: not valid TOML: {message}"]) from exc


def _toml_line(text: str, section: str, key: str | None) -> int | None:
    """The line of ``[section] key`` (or of ``[section]``) in a TOML file's text.

    Hand-written because tomllib has no source positions. It understands what a
    ketch.toml holds: ``[section]`` and ``[[section.key]]`` headers, ``key = ...`` lines
    and dotted ``section.key = ...`` keys; anything else falls back to the file name."""
    target = (section,) if key is None else (section, key)

    def names(dotted: str) -> tuple[str, ...]:
        return tuple(part.strip().strip("\"'") for part in dotted.split("."))

    def is_target(path: tuple[str, ...]) -> bool:  # section names are case-insensitive
        return bool(path) and (path[0].lower(), *path[1:])[: len(target)] == target

    table: tuple[str, ...] = ()
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        header = re.match(r"\[\[?([^\]]*)\]", line)
        if header:
            table = names(header[1])
            if is_target(table):
                return number
            continue
        assignment = re.match(r"([^=#\[{]+?)\s*=", line)
        if assignment and is_target((*table, *names(assignment[1]))):
            return number
    return None


def _location(loc: tuple[int | str, ...]) -> str:
    """``("auth", "role_rules", 0, "role")`` -> ``[auth] role_rules[0].role``."""
    if not loc:
        return "settings"
    text = f"[{loc[0]}]"
    previous: int | str = ""
    for index, part in enumerate(loc[1:]):
        if isinstance(part, int):
            text += f"[{part}]"
        elif isinstance(previous, int) and part in _UNION_TAGS:
            pass  # the discriminator's value, not a field
        else:
            text += f" {part}" if index == 0 else f".{part}"
        previous = part
    return text


def _environment_value(section: str, key: str | None) -> tuple[str, str] | None:
    """The ``KETCH__SECTION__KEY`` (or ``KETCH__SECTION``, JSON) variable that set a value."""
    wanted = [f"KETCH__{section}__{key}".upper()] if key else []
    wanted.append(f"KETCH__{section}".upper())
    found = {name.upper(): (name, value) for name, value in os.environ.items()}
    for name in wanted:
        if name in found:
            return found[name]
    return None


def _describe(error: Any, path: Path, text: str, data: dict[str, Any]) -> str:
    """One validation error as one line that says where the value came from."""
    loc: tuple[int | str, ...] = tuple(error["loc"])
    section = str(loc[0]) if loc else ""
    key = loc[1] if len(loc) > 1 and isinstance(loc[1], str) else None
    message = " ".join(str(error["msg"]).removeprefix("Value error, ").split())
    setting = _location(loc)
    secret = _is_secret(section, key)
    from_environment = _environment_value(section, key)
    if from_environment is not None:
        name, value = from_environment
        return f"{name}={'***' if secret else _short(value)}: {setting}: {message}"
    table = next((v for k, v in data.items() if k.lower() == section), None)
    if table is None or (key is not None and not (isinstance(table, dict) and key in table)):
        return f"{setting}: {message}"
    line = _toml_line(text, section, key)
    where = f"{path} line {line}" if line else str(path)
    shown = ""
    if error["type"] != "missing":
        shown = " = " + ("***" if secret else _short(json.dumps(error["input"], default=str)))
    return f"{where}: {setting}{shown}: {message}"


def _is_complex(annotation: Any) -> bool:
    """Whether pydantic-settings reads this field's environment variable as JSON."""
    for kind in _types_in(annotation):
        if get_origin(kind) in (list, dict, set, tuple) or kind in (list, dict):
            return True
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            return True
    return False


def _check_environment_json() -> None:
    """Lists and tables in ``KETCH__*`` variables are JSON; say so in one line per variable
    (pydantic-settings only says which section failed)."""
    problems = []
    for name, value in os.environ.items():
        parts = name.upper().removeprefix("KETCH__").lower().split("__")
        if not name.upper().startswith("KETCH__") or parts[0] not in _SECTIONS:
            continue
        if len(parts) == 1:
            expected = "a JSON object"
        else:
            field = _field(parts[0], parts[1])
            if len(parts) != 2 or field is None or not _is_complex(field.annotation):
                continue
            kinds = _types_in(field.annotation)
            if list[str] in kinds:  # the usual slip: corp.com,other.org
                example = json.dumps([v.strip() for v in value.split(",") if v.strip()] or ["..."])
                expected = f"a JSON list, e.g. {example}"
            elif any(get_origin(kind) is list for kind in kinds):
                expected = "a JSON list of objects (docs/configuration.md has an example)"
            else:
                expected = "a JSON object"
        try:
            json.loads(value)
        except json.JSONDecodeError as exc:
            setting = _location(tuple(parts))
            reason = f"not JSON ({exc.msg} at column {exc.colno}); write {expected}"
            problems.append(f"{name}={_short(value)}: {setting}: {reason}")
    if problems:
        raise SettingsError(problems)


def _nearest(section: str, key: str | None) -> tuple[str, str | None] | None:
    """The valid setting nearest to an unknown one: a close key of the same section, the
    same key in another section, else the closest of all. ``key`` is None when one name was
    given (``KETCH__PARALLELISM``, a TOML key outside any section, an unknown section)."""
    fields = {name: list(model.model_fields) for name, model in _SECTIONS.items()}
    everything = [f"{s}.{k}" for s, keys in fields.items() for k in keys]
    if key is None:
        owners = [s for s, keys in fields.items() if section in keys]
        if owners:
            return owners[0], section
        close = difflib.get_close_matches(section, list(fields), n=1, cutoff=0.7)
        if close:
            return close[0], None
        close = difflib.get_close_matches(section, [k for keys in fields.values() for k in keys], 1)
        owners = [s for s, keys in fields.items() if close and close[0] in keys]
        return (owners[0], close[0]) if owners else None
    if section in fields and (close := difflib.get_close_matches(key, fields[section], n=1)):
        return section, close[0]
    owners = [s for s, keys in fields.items() if key in keys]
    if owners:
        return owners[0], key
    close = difflib.get_close_matches(f"{section}.{key}", everything, n=1)
    return (close[0].split(".")[0], close[0].split(".")[1]) if close else None


_NO_HINT = "`ketch config show` lists the settings"


def _warn_unknown_environment() -> None:
    """Unknown ``KETCH__*`` variables are ignored, with a warning naming the nearest one."""
    for name in sorted(os.environ):
        if not name.upper().startswith("KETCH__"):
            continue
        parts = name.upper().removeprefix("KETCH__").lower().split("__")
        section, key = parts[0], (parts[1] if len(parts) > 1 else None)
        if section in _SECTIONS and (key is None or key in _SECTIONS[section].model_fields):
            continue
        nearest = _nearest(section, key)
        hint = _NO_HINT
        if nearest:
            hint = f"did you mean KETCH__{'__'.join(n for n in nearest if n).upper()}?"
        _warn_once(f"unknown setting {name} (ignored): {hint}")


def _warn_unknown_toml(path: Path, text: str, data: dict[str, Any]) -> None:
    """Unknown sections and keys of the TOML file are ignored, with a warning each."""
    unknown: list[tuple[str, str | None]] = []
    for section, table in data.items():
        name = section.lower()
        if name in _SECTIONS and isinstance(table, dict):
            # Section names are read case-insensitively, keys inside them are not.
            unknown += [(name, k) for k in table if k not in _SECTIONS[name].model_fields]
        else:
            unknown.append((name, None))
    for section, key in unknown:
        line = _toml_line(text, section, key)
        where = f"{path} line {line}" if line else str(path)
        if key is not None:
            what = f"setting [{section}] {key}"
        elif isinstance(data.get(section), dict):
            what = f"section [{section}]"
        else:
            what = f"setting {section} outside any [section]"
        nearest = _nearest(section, key.lower() if key else None)
        hint = _NO_HINT
        if nearest:
            hint = f"did you mean [{nearest[0]}]{f' {nearest[1]}' if nearest[1] else ''}?"
        _warn_once(f"{where}: unknown {what} (ignored): {hint}")
