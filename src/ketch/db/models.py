"""The metadata database: SQLAlchemy 2 models, the same on SQLite and PostgreSQL.

The database is the source of truth. Table and column names follow Airflow's
where the concept is the same, so a reader who knows Airflow's schema finds
their way. Every datetime is stored timezone-aware in UTC.

Change a model only together with a new Alembic revision in ``db/migrations``
(``tests/unit/test_migrations.py`` fails when they disagree).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware datetime that reads back aware on SQLite too.

    SQLite has no timezone type; SQLAlchemy would hand back naive values. We store
    UTC and re-attach UTC on read so code never mixes naive and aware datetimes.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(
                f"naive datetime {value!r} given to the database; use UTC-aware values"
            )
        from datetime import UTC

        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        from datetime import UTC

        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UtcDateTime, dict[str, Any]: JSON}


class DagModel(Base):
    """A DAG known to ketch, with its latest serialized form and its schedule bookkeeping."""

    __tablename__ = "dag"

    dag_id: Mapped[str] = mapped_column(String(250), primary_key=True)
    fileloc: Mapped[str] = mapped_column(Text)
    relative_fileloc: Mapped[str] = mapped_column(Text)
    is_paused: Mapped[bool] = mapped_column(Boolean, default=True)
    # False once the DAG disappeared from the folder (kept for its history).
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    serialized: Mapped[dict[str, Any]] = mapped_column(JSON)
    # sha256 of the serialized JSON: the processor skips writes when nothing changed.
    serialized_hash: Mapped[str] = mapped_column(String(64))
    description: Mapped[str | None] = mapped_column(Text, default=None)
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    schedule_summary: Mapped[str | None] = mapped_column(String(250), default=None)
    last_parsed_at: Mapped[datetime | None] = mapped_column(default=None)
    # The next scheduled run the scheduler will create (Airflow's next_dagrun* columns).
    next_dagrun: Mapped[datetime | None] = mapped_column(default=None)
    next_dagrun_data_interval_start: Mapped[datetime | None] = mapped_column(default=None)
    next_dagrun_data_interval_end: Mapped[datetime | None] = mapped_column(default=None)
    next_dagrun_create_after: Mapped[datetime | None] = mapped_column(default=None, index=True)
    # Set by the DAG processor (new or changed DAG) and by unpause: the scheduler then
    # recomputes the next_dagrun* columns from the timetable and clears it.
    needs_next_dagrun: Mapped[bool] = mapped_column(Boolean, default=True, index=True)


class DagRun(Base):
    __tablename__ = "dag_run"
    __table_args__ = (
        UniqueConstraint("dag_id", "run_id"),
        Index("ix_dag_run_state_dag_id", "state", "dag_id"),
        Index("ix_dag_run_dag_id_logical_date", "dag_id", "logical_date"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dag_id: Mapped[str] = mapped_column(String(250), ForeignKey("dag.dag_id", ondelete="CASCADE"))
    run_id: Mapped[str] = mapped_column(String(250))
    run_type: Mapped[str] = mapped_column(String(20))  # DagRunType
    state: Mapped[str] = mapped_column(String(20))  # DagRunState
    logical_date: Mapped[datetime | None] = mapped_column(default=None)
    data_interval_start: Mapped[datetime | None] = mapped_column(default=None)
    data_interval_end: Mapped[datetime | None] = mapped_column(default=None)
    run_after: Mapped[datetime]
    queued_at: Mapped[datetime | None] = mapped_column(default=None)
    start_date: Mapped[datetime | None] = mapped_column(default=None)
    end_date: Mapped[datetime | None] = mapped_column(default=None)
    conf: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # conf merged over the DAG's param defaults and validated: what tasks see as params.
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # The serialized DAG this run was created from (hash into dag_version), so a file
    # edited mid-run does not change the shape of a running run.
    dag_hash: Mapped[str] = mapped_column(String(64))
    # Set by user actions (clear, mark state) so the scheduler re-evaluates the whole run
    # once; the normal path is event-driven and never scans a run.
    needs_evaluation: Mapped[bool] = mapped_column(Boolean, default=True, index=True)
    note: Mapped[str | None] = mapped_column(Text, default=None)


class DagVersion(Base):
    """Every serialized form a run was created from, by hash (Airflow 3's dag_version)."""

    __tablename__ = "dag_version"

    dag_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    dag_id: Mapped[str] = mapped_column(String(250), index=True)
    serialized: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime]


class TaskInstance(Base):
    __tablename__ = "task_instance"
    __table_args__ = (
        UniqueConstraint("dag_run_id", "task_id", "map_index"),
        Index("ix_task_instance_state_dag_id", "state", "dag_id"),
        Index("ix_task_instance_dag_run_id_state", "dag_run_id", "state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dag_run_id: Mapped[int] = mapped_column(ForeignKey("dag_run.id", ondelete="CASCADE"))
    dag_id: Mapped[str] = mapped_column(String(250))
    run_id: Mapped[str] = mapped_column(String(250))
    task_id: Mapped[str] = mapped_column(String(250))
    # -1: not mapped (Airflow's value), or a mapped task not expanded yet; 0..N-1: the
    # instances of an expanded mapped task (see scheduler/expansion.py).
    map_index: Mapped[int] = mapped_column(Integer, default=-1, server_default=text("-1"))
    # The instance's name, its map_index_template rendered by its last try (Airflow's
    # column); NULL without a template.
    rendered_map_index: Mapped[str | None] = mapped_column(String(250), default=None)
    state: Mapped[str | None] = mapped_column(String(20), default=None)  # TaskInstanceState
    # The number of the current (or last) try; 0 before the first. Incremented when queued.
    try_number: Mapped[int] = mapped_column(Integer, default=0)
    # Highest try_number allowed before failing for good (Airflow's max_tries: retries,
    # raised by a clear so the task gets its retries again).
    max_tries: Mapped[int] = mapped_column(Integer, default=0)
    priority_weight: Mapped[int] = mapped_column(Integer, default=1)
    pool: Mapped[str] = mapped_column(String(256), default="default_pool")
    pool_slots: Mapped[int] = mapped_column(Integer, default=1)
    queued_at: Mapped[datetime | None] = mapped_column(default=None)
    start_date: Mapped[datetime | None] = mapped_column(default=None)
    end_date: Mapped[datetime | None] = mapped_column(default=None)
    duration: Mapped[float | None] = mapped_column(Float, default=None)
    # "The next attempt is due at": the retry of an up_for_retry TI, or the next poke of an
    # up_for_reschedule sensor (scheduler/reschedule.py); kept until that try ends.
    next_retry_at: Mapped[datetime | None] = mapped_column(default=None)
    last_heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)
    hostname: Mapped[str | None] = mapped_column(String(1000), default=None)
    pid: Mapped[int | None] = mapped_column(Integer, default=None)
    executor: Mapped[str | None] = mapped_column(String(50), default=None)
    # What the executor needs to find the try again after a restart: "pid:create_time"
    # for the local executor, the pod name for Kubernetes.
    external_executor_id: Mapped[str | None] = mapped_column(String(250), default=None)
    # Why the last try failed, in one line (exit code, timeout, OOMKilled, exception...).
    error: Mapped[str | None] = mapped_column(Text, default=None)
    # Set in the same statement that records a try's end (execution API, or the scheduler
    # for an unreported end) and cleared by the scheduler in the transaction that decides
    # the downstream tasks. A True row is a decision still owed: the scheduler finds it
    # from the database alone after a crash or a missed event (the safety pass).
    needs_reaction: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=false(), index=True
    )


class TaskInstanceTry(Base):
    """One row per try of a task instance: the history behind try_number."""

    __tablename__ = "task_instance_try"
    __table_args__ = (UniqueConstraint("task_instance_id", "try_number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task_instance_id: Mapped[int] = mapped_column(
        ForeignKey("task_instance.id", ondelete="CASCADE")
    )
    try_number: Mapped[int] = mapped_column(Integer)
    state: Mapped[str | None] = mapped_column(String(20), default=None)
    queued_at: Mapped[datetime | None] = mapped_column(default=None)
    start_date: Mapped[datetime | None] = mapped_column(default=None)
    end_date: Mapped[datetime | None] = mapped_column(default=None)
    hostname: Mapped[str | None] = mapped_column(String(1000), default=None)
    pid: Mapped[int | None] = mapped_column(Integer, default=None)
    external_executor_id: Mapped[str | None] = mapped_column(String(250), default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    # The try's rendered template fields (masked): what Airflow keeps in
    # rendered_task_instance_fields, here one JSON object per try.
    rendered_fields: Mapped[Any] = mapped_column(JSON, default=None, nullable=True)


class XCom(Base):
    """A value a task returned (key ``return_value``) or a branch's choice (``__branch__``)."""

    __tablename__ = "xcom"
    __table_args__ = (UniqueConstraint("dag_run_id", "task_id", "key", "map_index"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dag_run_id: Mapped[int] = mapped_column(ForeignKey("dag_run.id", ondelete="CASCADE"))
    task_id: Mapped[str] = mapped_column(String(250))
    key: Mapped[str] = mapped_column(String(512))
    # The task instance's map index (-1: not mapped).
    map_index: Mapped[int] = mapped_column(Integer, default=-1, server_default=text("-1"))
    value: Mapped[Any] = mapped_column(JSON)
    timestamp: Mapped[datetime]


class ImportError_(Base):
    """A DAG file that failed to parse, with its traceback (Airflow's import_error)."""

    __tablename__ = "import_error"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    filename: Mapped[str] = mapped_column(Text, unique=True)
    stacktrace: Mapped[str] = mapped_column(Text)
    timestamp: Mapped[datetime]


class DagCode(Base):
    """A DAG file's source, so a web server without the DAGs folder can show it.

    Written by the DAG processor in the transaction that stores the file's DAGs, only
    when the file's sha256 changed (Airflow's ``dag_code``, keyed by file as in Airflow 2:
    the DAGs of one file share one row)."""

    __tablename__ = "dag_code"

    fileloc: Mapped[str] = mapped_column(Text, primary_key=True)
    # The file's text, or a note saying it was too large to store.
    source_code: Mapped[str] = mapped_column(Text)
    source_code_hash: Mapped[str] = mapped_column(String(64))  # sha256 of the file's bytes
    last_updated: Mapped[datetime]


class Pool(Base):
    __tablename__ = "slot_pool"

    pool: Mapped[str] = mapped_column(String(256), primary_key=True)
    slots: Mapped[int] = mapped_column(Integer)
    description: Mapped[str | None] = mapped_column(Text, default=None)


DEFAULT_POOL_NAME = "default_pool"
DEFAULT_POOL_SLOTS = 128


class Variable(Base):
    """A variable: key -> string (JSON text for structured values), encrypted at rest.

    ``source`` is the id of the sync source that created the key (None: set by hand);
    only that source may delete it when the key disappears from its snapshot.
    """

    __tablename__ = "variable"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(250), unique=True)
    # Fernet token of the value (text); never the value in clear.
    val: Mapped[str] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(Text, default=None)
    is_sensitive: Mapped[bool] = mapped_column(Boolean, default=False)
    source: Mapped[str | None] = mapped_column(String(250), default=None, index=True)
    source_version: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class Connection(Base):
    """A connection (Airflow's fields); password and extra are encrypted at rest."""

    __tablename__ = "connection"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    conn_id: Mapped[str] = mapped_column(String(250), unique=True)
    conn_type: Mapped[str] = mapped_column(String(500))
    description: Mapped[str | None] = mapped_column(Text, default=None)
    host: Mapped[str | None] = mapped_column(String(500), default=None)
    schema: Mapped[str | None] = mapped_column(String(500), default=None)
    login: Mapped[str | None] = mapped_column(Text, default=None)
    # Fernet tokens (text) of the password and of the extra JSON.
    password: Mapped[str | None] = mapped_column(Text, default=None)
    port: Mapped[int | None] = mapped_column(Integer, default=None)
    extra: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class VariableSyncStatus(Base):
    """One row per configured sync source: what ``ketch variables sync-status`` shows."""

    __tablename__ = "variable_sync_status"

    source_id: Mapped[str] = mapped_column(String(250), primary_key=True)
    kind: Mapped[str] = mapped_column(String(50))
    # The version of the last snapshot applied (None before the first success).
    version: Mapped[str | None] = mapped_column(Text, default=None)
    last_attempt_at: Mapped[datetime | None] = mapped_column(default=None)
    last_success_at: Mapped[datetime | None] = mapped_column(default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    last_error_at: Mapped[datetime | None] = mapped_column(default=None)
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(default=None)
    managed_keys: Mapped[int] = mapped_column(Integer, default=0)


class VariableAuditLog(Base):
    """Every applied change to a variable: key, source, version, time; never the value."""

    __tablename__ = "variable_audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(250), index=True)
    # created | updated | deleted | overwrote_manual (a sync replaced a value set by hand)
    action: Mapped[str] = mapped_column(String(30))
    # The sync source id, or "user" / "cli" / "api" for changes made by hand.
    source: Mapped[str] = mapped_column(String(250))
    version: Mapped[str | None] = mapped_column(Text, default=None)
    timestamp: Mapped[datetime] = mapped_column(index=True)


class SchedulerLease(Base):
    """Who may schedule: one row per lease name, held by one scheduler at a time.

    The holder renews ``expires_at`` (database clock) while it lives; a standby takes
    the lease once it expired and increments ``fencing_token``. Every transaction of the
    active scheduler checks that the token is still its own before it commits, so a
    scheduler that was paused or cut off can never write after another took over.
    """

    __tablename__ = "scheduler_lease"

    name: Mapped[str] = mapped_column(String(50), primary_key=True)
    holder: Mapped[str] = mapped_column(String(250))
    fencing_token: Mapped[int] = mapped_column(Integer, default=0)
    acquired_at: Mapped[datetime]
    renewed_at: Mapped[datetime]
    expires_at: Mapped[datetime]


class HealthProbe(Base):
    """One row the web server's health check updates: proof that the database takes writes
    (a database that answers reads but refuses writes, full or read-only, is unhealthy)."""

    __tablename__ = "health_probe"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    checked_at: Mapped[datetime]


class ApiToken(Base):
    """A bearer token for automation and the CLI: created by an admin, shown once.

    Only the SHA-256 of the secret is stored: a token is 256 random bits, so a fast hash
    is as good as a slow one against guessing and lets a request be checked with one
    indexed lookup.
    """

    __tablename__ = "api_token"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(250))
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(20))
    scopes: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(320))
    expires_at: Mapped[datetime | None] = mapped_column(default=None)
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
    revoked_by: Mapped[str | None] = mapped_column(String(320), default=None)


class WebUser(Base):
    """Someone who signed in: the role the rules gave at the last sign-in, and whether an
    admin disabled the account (sessions of a disabled user end at their next re-check)."""

    __tablename__ = "web_user"

    email: Mapped[str] = mapped_column(String(320), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(250), default=None)
    role: Mapped[str | None] = mapped_column(String(20), default=None)
    first_sign_in_at: Mapped[datetime]
    last_sign_in_at: Mapped[datetime]
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    disabled_at: Mapped[datetime | None] = mapped_column(default=None)
    disabled_by: Mapped[str | None] = mapped_column(String(320), default=None)


class AuditLog(Base):
    """Every state-changing request and sign-in: who, what, when, from where.

    ``target`` holds the path parameters (ids), never a request body, so no secret value
    can end up here.
    """

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(index=True)
    actor: Mapped[str] = mapped_column(String(320), index=True)
    role: Mapped[str | None] = mapped_column(String(20), default=None)
    action: Mapped[str] = mapped_column(String(250))
    target: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    ip: Mapped[str | None] = mapped_column(String(64), default=None)
    detail: Mapped[str | None] = mapped_column(Text, default=None)
