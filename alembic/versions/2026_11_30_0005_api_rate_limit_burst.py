"""api rate limit burst: a run-time limit may set its own burst (the API's per-tenant limit)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 09:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("rate_limits", sa.Column("burst", sa.Integer(), nullable=True))
    op.create_check_constraint("burst", "rate_limits", "burst IS NULL OR burst > 0")


def downgrade() -> None:
    op.drop_constraint("ck_rate_limits_burst", "rate_limits", type_="check")
    op.drop_column("rate_limits", "burst")
