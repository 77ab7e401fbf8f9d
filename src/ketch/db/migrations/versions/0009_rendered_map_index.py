"""task_instance.rendered_map_index: a mapped instance's name from its map_index_template

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 00:00:00

Airflow's column of the same name and size: the task's ``map_index_template`` rendered
at the end of the try (ketch.authoring.map_index_template), NULL without one.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("task_instance") as batch:
        batch.add_column(sa.Column("rendered_map_index", sa.String(length=250), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("task_instance") as batch:
        batch.drop_column("rendered_map_index")
