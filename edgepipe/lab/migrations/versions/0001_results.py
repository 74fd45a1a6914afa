"""The results store: devices, artifacts, runs, results and their sittings.

Revision ID: 0001
Revises:
Create Date: 2026-05-21
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "devices",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("hostname", sa.String(255), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False, index=True),
        sa.Column("identity_words", sa.Text),
        sa.Column("cpu_model", sa.Text),
        sa.Column("machine", sa.String(64)),
        sa.Column("cores", sa.Integer),
        sa.Column("identity", sa.JSON),
        sa.UniqueConstraint("name", "hostname", "fingerprint", name="uq_device"))
    op.create_table(
        "artifacts",
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("file", sa.String(255), nullable=False),
        sa.Column("model", sa.String(255)),
        sa.Column("format", sa.String(32)),
        sa.Column("precision", sa.String(16)),
        sa.Column("size_bytes", sa.BigInteger),
        sa.Column("manifest", sa.JSON))
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("created", sa.Float, nullable=False, index=True),
        sa.Column("host", sa.String(255)),
        sa.Column("folder", sa.Text),
        sa.Column("source_sha256", sa.String(64), unique=True),
        sa.Column("edgepipe_version", sa.String(32)),
        sa.Column("config", sa.JSON))
    op.create_table(
        "results",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id", ondelete="CASCADE"),
                  nullable=False, index=True),
        sa.Column("device_id", sa.Integer, sa.ForeignKey("devices.id"), nullable=False),
        sa.Column("artifact_sha256", sa.String(64), sa.ForeignKey("artifacts.sha256"),
                  nullable=False, index=True),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("job_id", sa.String(64)),
        sa.Column("model", sa.String(255), nullable=False),
        sa.Column("format", sa.String(32), nullable=False),
        sa.Column("precision", sa.String(16), nullable=False),
        sa.Column("runtime", sa.String(32), nullable=False),
        sa.Column("runtime_version", sa.String(64), index=True),
        sa.Column("runtimes", sa.JSON),
        sa.Column("threads", sa.Integer, nullable=False),
        sa.Column("median_ms", sa.Float),
        sa.Column("p90_ms", sa.Float),
        sa.Column("min_ms", sa.Float),
        sa.Column("count", sa.Integer),
        sa.Column("sittings", sa.Integer, nullable=False),
        sa.Column("flagged", sa.Boolean, nullable=False),
        sa.Column("flags", sa.JSON),
        sa.Column("latency", sa.JSON),
        sa.Column("memory", sa.JSON),
        sa.Column("load_ms", sa.Float),
        sa.Column("measured_by", sa.Text),
        sa.Column("device_state", sa.JSON),
        sa.Column("replicability", sa.JSON),
        sa.Column("per_op", sa.JSON),
        sa.Column("per_op_source", sa.Text),
        sa.UniqueConstraint("device_id", "job_id", name="uq_result_job"))
    op.create_index("ix_results_model_created", "results", ["model", "created"])
    op.create_index("ix_results_device_created", "results", ["device_id", "created"])
    op.create_table(
        "sittings",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("result_id", sa.Integer, sa.ForeignKey("results.id", ondelete="CASCADE"),
                  nullable=False, index=True),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("job_id", sa.String(64)),
        sa.Column("time", sa.Float),
        sa.Column("median_ms", sa.Float),
        sa.Column("raw_ms", sa.JSON),
        sa.Column("flags", sa.JSON),
        sa.Column("reference", sa.JSON))


def downgrade() -> None:
    for table in ("sittings", "results", "runs", "artifacts", "devices"):
        op.drop_table(table)
