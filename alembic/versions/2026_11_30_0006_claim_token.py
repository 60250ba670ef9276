"""claim token: a worker whose claim committed without its answer takes its rows back

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 10:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable, no default: a catalogue change only, however many messages there are.
    op.add_column("messages", sa.Column("claim_token", postgresql.UUID(as_uuid=True)))


def downgrade() -> None:
    op.drop_column("messages", "claim_token")
