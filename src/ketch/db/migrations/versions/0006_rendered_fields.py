"""task_instance_try.rendered_fields: a try's rendered template fields

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 00:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A nullable column: a plain ALTER TABLE ADD COLUMN on both SQLite and PostgreSQL.
    op.add_column("task_instance_try", sa.Column("rendered_fields", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("task_instance_try") as batch:
        batch.drop_column("rendered_fields")
