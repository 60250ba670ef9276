"""A message: one email accepted for delivery, and the state of its delivery.

The row is the state. Workers claim it with a lease; the sweeper and the dispatcher find work by
the partial indexes below, so neither scans the table.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, Index, Integer, Text, func, text
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, TIMESTAMP, UUID
from sqlalchemy.orm import Mapped, mapped_column

from mailsvc.kit.ids import uuid7
from mailsvc.models.base import Base


class MessageStatus(enum.StrEnum):
    scheduled = "scheduled"
    queued = "queued"
    sending = "sending"
    retrying = "retrying"
    sent = "sent"
    delivered = "delivered"
    bounced = "bounced"
    complained = "complained"
    failed = "failed"
    cancelled = "cancelled"
    suppressed = "suppressed"


_STATUS_LIST = ", ".join(f"'{s.value}'" for s in MessageStatus)


class Message(Base):
    __tablename__ = "messages"
    __table_args__ = (
        CheckConstraint(f"status IN ({_STATUS_LIST})", name="status"),
        CheckConstraint("priority IN ('high', 'normal', 'low')", name="priority"),
        # The list endpoint: newest first within a tenant, optionally by status.
        Index("ix_messages_tenant_id_id", "tenant_id", text("id DESC")),
        Index("ix_messages_tenant_status_id", "tenant_id", "status", text("id DESC")),
        Index("ix_messages_tags", "tags", postgresql_using="gin"),
        Index("ix_messages_recipients", "recipients", postgresql_using="gin"),
        # Idempotency: one message per (tenant, key); a unique index, not a check-then-insert.
        Index(
            "uq_messages_tenant_idempotency_key",
            "tenant_id",
            "idempotency_key",
            unique=True,
            postgresql_where=text("idempotency_key IS NOT NULL"),
        ),
        # Expiring idempotency keys after their TTL.
        Index(
            "ix_messages_idempotency_created",
            "created_at",
            postgresql_where=text("idempotency_key IS NOT NULL"),
        ),
        # The dispatcher: parked rows (not in the broker) that are due, but bulk waiting its turn.
        Index(
            "ix_messages_due",
            "not_before",
            postgresql_where=text(
                "enqueued_at IS NULL AND status IN ('scheduled', 'queued', 'retrying') "
                "AND NOT (lane = 'bulk' AND status = 'queued')"
            ),
        ),
        # The bulk feeder: parked bulk rows per tenant, taken in turn across tenants.
        Index(
            "ix_messages_bulk_parked",
            "tenant_id",
            "not_before",
            postgresql_where=text("lane = 'bulk' AND status = 'queued' AND enqueued_at IS NULL"),
        ),
        # The sweeper: rows handed to the broker that may have been lost with it.
        Index(
            "ix_messages_enqueued",
            "enqueued_at",
            postgresql_where=text("enqueued_at IS NOT NULL AND status IN ('queued', 'retrying')"),
        ),
        # The sweeper: claims whose worker died.
        Index("ix_messages_lease", "lease_until", postgresql_where=text("status = 'sending'")),
        # Followers waiting for the message before them (a welcome after its confirmation).
        Index(
            "ix_messages_after",
            "after_message_id",
            postgresql_where=text("after_message_id IS NOT NULL AND status = 'scheduled'"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid7)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("tenants.id", ondelete="CASCADE")
    )
    status: Mapped[str] = mapped_column(Text)
    lane: Mapped[str] = mapped_column(Text)
    priority: Mapped[str] = mapped_column(Text)

    sender: Mapped[dict[str, Any]] = mapped_column(JSONB)
    to: Mapped[list[dict[str, Any]]] = mapped_column(JSONB)
    cc: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, default=list)
    bcc: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, default=list)
    reply_to: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    # Every envelope recipient, lower-cased: serves the `to` filter through a GIN index.
    recipients: Mapped[list[str]] = mapped_column(ARRAY(Text))
    # NULL until rendered: a templated message made by a recurring job is rendered by the worker.
    subject: Mapped[str | None] = mapped_column(Text)
    text_body: Mapped[str | None] = mapped_column(Text)
    html_body: Mapped[str | None] = mapped_column(Text)
    template: Mapped[str | None] = mapped_column(Text)
    variables: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    headers: Mapped[dict[str, str]] = mapped_column(JSONB, default=dict)
    tags: Mapped[list[str]] = mapped_column(ARRAY(Text), default=list)
    meta: Mapped[dict[str, str]] = mapped_column("metadata", JSONB, default=dict)

    send_at: Mapped[datetime | None] = mapped_column(TIMESTAMP(timezone=True))
    # Held (status scheduled) until this message is sent or has failed: keeps an event's emails
    # in order. not_before is a backstop in case that never happens.
    after_message_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    not_before: Mapped[datetime] = mapped_column(
        TIMESTAMP(timezone=True), server_default=func.now()
    )
    lease_until: Mapped[datetime | None] = mapped_column(TIMESTAMP(timezone=True))
    # The claim that holds the lease: its worker may take the row back after a lost answer.
    claim_token: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    # When the row was last handed to the broker; NULL while it is parked for the dispatcher.
    enqueued_at: Mapped[datetime | None] = mapped_column(TIMESTAMP(timezone=True))
    attempt_count: Mapped[int] = mapped_column(Integer, default=0)

    idempotency_key: Mapped[str | None] = mapped_column(Text)
    request_hash: Mapped[str | None] = mapped_column(Text)
    message_id_header: Mapped[str] = mapped_column(Text)

    provider: Mapped[str | None] = mapped_column(Text)
    provider_message_id: Mapped[str | None] = mapped_column(Text)
    error_code: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)

    created_at: Mapped[datetime] = mapped_column(
        TIMESTAMP(timezone=True), server_default=func.now()
    )
    updated_at: Mapped[datetime] = mapped_column(
        TIMESTAMP(timezone=True), server_default=func.now()
    )
    sent_at: Mapped[datetime | None] = mapped_column(TIMESTAMP(timezone=True))
