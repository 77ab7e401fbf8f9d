"""task_instance.map_index and xcom.map_index: dynamic task mapping

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 00:00:00

A mapped task has one task instance (and return value) per map index; every other task
keeps -1, Airflow's value for "not mapped". The unique constraints gain the column.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _map_index() -> sa.Column[int]:
    return sa.Column("map_index", sa.Integer(), server_default=sa.text("-1"), nullable=False)


def upgrade() -> None:
    # batch mode: SQLite rebuilds the table to change a unique constraint.
    with op.batch_alter_table("task_instance") as batch:
        batch.add_column(_map_index())
        batch.drop_constraint("uq_task_instance_dag_run_id_task_id", type_="unique")
        batch.create_unique_constraint(
            "uq_task_instance_dag_run_id_task_id_map_index", ["dag_run_id", "task_id", "map_index"]
        )
    with op.batch_alter_table("xcom") as batch:
        batch.add_column(_map_index())
        batch.drop_constraint("uq_xcom_dag_run_id_task_id_key", type_="unique")
        batch.create_unique_constraint(
            "uq_xcom_dag_run_id_task_id_key_map_index",
            ["dag_run_id", "task_id", "key", "map_index"],
        )


def downgrade() -> None:
    op.execute("DELETE FROM xcom WHERE map_index > 0")
    op.execute("DELETE FROM task_instance WHERE map_index > 0")
    with op.batch_alter_table("xcom") as batch:
        batch.drop_constraint("uq_xcom_dag_run_id_task_id_key_map_index", type_="unique")
        batch.create_unique_constraint(
            "uq_xcom_dag_run_id_task_id_key", ["dag_run_id", "task_id", "key"]
        )
        batch.drop_column("map_index")
    with op.batch_alter_table("task_instance") as batch:
        batch.drop_constraint("uq_task_instance_dag_run_id_task_id_map_index", type_="unique")
        batch.create_unique_constraint(
            "uq_task_instance_dag_run_id_task_id", ["dag_run_id", "task_id"]
        )
        batch.drop_column("map_index")
