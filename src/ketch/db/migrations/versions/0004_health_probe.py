"""health_probe: the row the health check writes

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 00:00:00
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    table = op.create_table(
        "health_probe",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_health_probe")),
    )
    op.bulk_insert(table, [{"id": 1, "checked_at": datetime.now(UTC)}])


def downgrade() -> None:
    op.drop_table("health_probe")
