"""dag_code: each DAG file's source, for web servers without the DAGs folder

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 00:00:00

One row per DAG file (Airflow 2's dag_code was keyed by file too; Airflow 3 adds one row
per DAG version): the DAG processor writes it with the file's DAGs, only when the file's
sha256 changed, so an unchanged parse writes nothing here.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "dag_code",
        sa.Column("fileloc", sa.Text(), nullable=False),
        sa.Column("source_code", sa.Text(), nullable=False),
        sa.Column("source_code_hash", sa.String(length=64), nullable=False),
        sa.Column("last_updated", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("fileloc", name=op.f("pk_dag_code")),
    )


def downgrade() -> None:
    op.drop_table("dag_code")
