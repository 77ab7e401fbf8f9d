"""task_instance.needs_reaction and the scheduler lease

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 00:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("task_instance") as batch:
        batch.add_column(
            sa.Column("needs_reaction", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch.create_index(
            batch.f("ix_task_instance_needs_reaction"), ["needs_reaction"], unique=False
        )
    op.create_table(
        "scheduler_lease",
        sa.Column("name", sa.String(length=50), nullable=False),
        sa.Column("holder", sa.String(length=250), nullable=False),
        sa.Column("fencing_token", sa.Integer(), nullable=False),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("renewed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_scheduler_lease")),
    )


def downgrade() -> None:
    op.drop_table("scheduler_lease")
    with op.batch_alter_table("task_instance") as batch:
        batch.drop_index(batch.f("ix_task_instance_needs_reaction"))
        batch.drop_column("needs_reaction")
