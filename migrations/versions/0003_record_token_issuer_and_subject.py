"""Record, on each users row, the token issuer and subject it was created from.

Null for users created behind a trusted gateway (AUTH_TRUSTED_HEADER), which sends no token.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("users", sa.Column("issuer", sa.Text(), nullable=True))
    op.add_column("users", sa.Column("subject", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("users", "subject")
    op.drop_column("users", "issuer")
