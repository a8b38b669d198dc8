"""warnings, daily backoff, token data access, link clicks, campaigns

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30

Adds (never dropping anything):
- integrations: last_warning, last_warning_at, next_attempt_at (closed/disabled accounts: once a day);
  (what Meta's debug_token says lives on the credential: see 0004);
- campaign_metrics.link_clicks (NULL for rows synced before);
- campaigns: one row per campaign of an integration (current name, status, vanished), filled from the
  stored rows (the name of each campaign's latest day), and every stored row's campaign_name set to it;
- the view campaign_days_seen: first and last day each campaign has rows.
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

VIEW = (
    "CREATE VIEW campaign_days_seen AS "
    "SELECT integration_id, campaign_id, MIN(date) AS first_day, MAX(date) AS last_day, COUNT(*) AS days "
    "FROM campaign_metrics GROUP BY integration_id, campaign_id"
)


def upgrade() -> None:
    with op.batch_alter_table('integrations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('last_warning', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('last_warning_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=True))

    with op.batch_alter_table('campaign_metrics', schema=None) as batch_op:
        batch_op.add_column(sa.Column('link_clicks', sa.BigInteger(), nullable=True))

    op.create_table('campaigns',
    sa.Column('integration_id', sa.Integer(), nullable=False),
    sa.Column('campaign_id', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=500), nullable=True),
    sa.Column('status', sa.String(length=32), nullable=True),
    sa.Column('vanished', sa.Boolean(), nullable=False),
    sa.Column('vanished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['integration_id'], ['integrations.id'], ),
    sa.PrimaryKeyConstraint('integration_id', 'campaign_id')
    )

    # One campaign, one name: each campaign's latest stored name becomes its name on every stored day.
    latest = (
        "SELECT m.campaign_name FROM campaign_metrics m WHERE m.integration_id = campaign_metrics_outer.integration_id "
        "AND m.campaign_id = campaign_metrics_outer.campaign_id AND m.campaign_name IS NOT NULL ORDER BY m.date DESC LIMIT 1"
    )
    op.execute(
        "INSERT INTO campaigns (integration_id, campaign_id, name, status, vanished, vanished_at, updated_at) "
        f"SELECT integration_id, campaign_id, ({latest}), NULL, false, NULL, MAX(synced_at) "
        "FROM campaign_metrics campaign_metrics_outer GROUP BY integration_id, campaign_id"
    )
    op.execute(
        "UPDATE campaign_metrics SET campaign_name = (SELECT c.name FROM campaigns c "
        "WHERE c.integration_id = campaign_metrics.integration_id AND c.campaign_id = campaign_metrics.campaign_id) "
        "WHERE EXISTS (SELECT 1 FROM campaigns c WHERE c.integration_id = campaign_metrics.integration_id "
        "AND c.campaign_id = campaign_metrics.campaign_id AND c.name IS NOT NULL)"
    )
    op.execute(VIEW)


def downgrade() -> None:
    op.execute("DROP VIEW campaign_days_seen")
    op.drop_table('campaigns')
    with op.batch_alter_table('campaign_metrics', schema=None) as batch_op:
        batch_op.drop_column('link_clicks')
    with op.batch_alter_table('integrations', schema=None) as batch_op:
        batch_op.drop_column('next_attempt_at')
        batch_op.drop_column('last_warning_at')
        batch_op.drop_column('last_warning')
