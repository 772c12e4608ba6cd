"""Service settings, from `SEGMENTS_*` environment variables (plus the conventional DATABASE_URL)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import phonenumbers
from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODELS_DIR = PROJECT_ROOT / "models"
# what a PostgreSQL URL may start with; each is read with psycopg 3
POSTGRES_SCHEMES = ("postgres", "postgresql", "postgresql+psycopg")


class ConfigurationError(Exception):
    """Settings the service cannot start with: every problem found, each with its fix."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SEGMENTS_", extra="ignore")

    database_url: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("DATABASE_URL", "SEGMENTS_DATABASE_URL"),
        description="the PostgreSQL server, e.g. postgresql://user:password@host:5432/db; unset: "
        "`segments` starts an embedded PostgreSQL in SEGMENTS_EMBEDDED_DIR",
    )
    embedded_dir: Path = Field(
        default=Path(".segments/postgres"),
        description="where the embedded PostgreSQL keeps its data when DATABASE_URL is unset "
        "(relative to the working directory)",
    )
    model_dir: Path = Field(
        default=DEFAULT_MODELS_DIR,
        description="a model folder, or a folder of versions with a DEFAULT file naming one",
    )
    max_batch: int = Field(default=10_000, ge=1, description="most customers in one batch request")
    max_body_bytes: int = Field(
        default=16 * 1024 * 1024, ge=1024, description="largest request body accepted, in bytes"
    )
    drift_window: int = Field(
        default=10_000, ge=10, description="recent assignments the live drift figures cover"
    )
    drift_cache_seconds: float = Field(
        default=5.0, ge=0, description="how long a computed drift figure is reused"
    )
    db_connect_timeout: int = Field(
        default=2, ge=1, description="seconds to wait for a new database connection"
    )
    db_statement_timeout_ms: int = Field(
        default=5_000, ge=100, description="longest a statement may run (PostgreSQL)"
    )
    db_lock_timeout_ms: int = Field(
        default=4_000,
        ge=0,
        description="longest a statement may wait for a lock, kept below the statement timeout "
        "so that a lock wait is told apart from a slow statement (0: up to the statement timeout)",
    )
    comparisons_per_worker: int = Field(
        default=2,
        ge=1,
        description="model comparisons (GET /v1/models/{version}/comparison, activation's check) "
        "a worker runs at once; more wait (SEGMENTS_COMPARISON_QUEUE_SECONDS), then get 503 busy",
    )
    comparison_queue_seconds: float = Field(
        default=10,
        ge=0,
        le=60,
        description="how long a comparison waits for a running one to end before 503 busy",
    )
    db_pool_size: int = Field(
        default=10,
        ge=1,
        description="database connections each worker process keeps in its pool; as many again "
        "may be opened for a burst, so up to twice this per process, plus one of its own that "
        "the event loop writes single assignments on (the group committer's)",
    )
    db_pool_timeout: float = Field(
        default=2.0, gt=0, description="seconds to wait for a pooled connection"
    )
    group_commit_max_rows: int = Field(
        default=512, ge=1, description="most single assignments in one commit"
    )
    group_commit_wait_ms: float = Field(
        default=0.0,
        ge=0,
        le=50,
        description="extra wait to gather rows before a commit; 0 = commit as soon as the writer is free",
    )
    drift_time_windows: str = Field(
        default="1h,24h",
        description="time windows for segment_drift_window_* (e.g. 15m,1h,24h; empty: none)",
    )
    drift_max_rows: int = Field(
        default=50_000, ge=100, description="newest assignments a time window reads at most"
    )
    drift_min_samples: int = Field(
        default=100, ge=1, description="fewest assignments behind a drift figure"
    )
    model_poll_seconds: float = Field(
        default=2.0,
        gt=0,
        le=60,
        description="how often each worker checks the registry for a new active or shadow model",
    )
    model_activate_on_start: bool = Field(
        default=False,
        description="activate SEGMENTS_MODEL_DIR's model once at `segments serve` launch even if the "
        "registry has another active (`--model DIR` implies it); otherwise the registry's "
        "active version wins. A process started otherwise (plain uvicorn) honours it at its "
        "own start",
    )
    shadow_flush_ms: float = Field(
        default=50.0, gt=0, le=5_000, description="how long shadow rows gather before scoring"
    )
    api_keys: SecretStr = Field(
        default=SecretStr(""),
        description="API keys by hash, one `name:sha256:scope+scope` entry per line or comma "
        "(`segments keys create` prints one); empty: no keys",
    )
    api_keys_file: Path | None = Field(
        default=None, description="a file holding the same entries (e.g. a mounted Secret)"
    )
    allow_anonymous: bool = Field(
        default=False,
        description="serve without API keys (the embedded quick start may without it); said "
        "loudly at start-up and in /readyz",
    )
    max_exports: int = Field(
        default=4,
        ge=1,
        description="streamed audience exports one worker runs at once (each holds a database "
        "connection until its client has read everything); more are a 429",
    )
    erasure_notice_days: int = Field(
        default=30,
        ge=0,
        le=3650,
        description="days the change feeds carry an erased customer's `exited` event (cause "
        "erasure), so ad platforms following them drop the customer; 0: no such event",
    )
    erasure_prune_seconds: float = Field(
        default=3600.0,
        gt=0,
        le=86_400,
        description="how often each worker deletes erasure notices past "
        "SEGMENTS_ERASURE_NOTICE_DAYS",
    )
    refresh_seconds: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="how often each worker re-scores the customers whose segment time has "
        "changed (recency grows): no membership is staler than this plus one round's work",
    )
    refresh_chunk: int = Field(
        default=1000,
        ge=1,
        le=100_000,
        description="customers the refresher re-scores per transaction",
    )
    erasure_key: SecretStr = Field(
        default=SecretStr(""),
        description="secret key of the keyed hash erasure tombstones name customers by; "
        "required with DATABASE_URL (the embedded quick start keeps its own in its folder), "
        "and never changed: a new key forgets every tombstone",
    )
    phone_default_region: str | None = Field(
        default=None,
        min_length=2,
        max_length=2,
        description="region (e.g. GB, US) for phone numbers sent without a +country code; "
        "unset: such numbers are refused",
    )
    gc_freeze: bool = Field(
        default=True, description="freeze start-up objects out of the garbage collector"
    )
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = Field(
        default="info",
        description="level of uvicorn's and the service's own logs under `segments serve`",
    )
    log_format: Literal["json", "text"] = Field(
        default="json",
        description="`json`: one JSON object per log line, for a log pipeline; `text`: plain "
        "lines for a person (`make serve` sets it) (`segments serve`)",
    )
    rate_limit_per_key: float = Field(
        default=0,
        ge=0,
        description="requests per second one API key may make to each worker process, with "
        "SEGMENTS_RATE_LIMIT_PER_KEY_BURST more at once; past it 429 rate_limited (0: no limit)",
    )
    rate_limit_per_key_burst: int = Field(
        default=100, ge=1, description="requests a key may make at once on top of its rate"
    )
    rate_limit_per_address: float = Field(
        default=0,
        ge=0,
        description="requests per second one client address may make to each worker process "
        "(probes and /metrics aside), with SEGMENTS_RATE_LIMIT_PER_ADDRESS_BURST more at once; "
        "past it 429 rate_limited (0: no limit). The address is the connection's peer: behind a "
        "proxy, the proxy's",
    )
    rate_limit_per_address_burst: int = Field(
        default=100, ge=1, description="requests an address may make at once on top of its rate"
    )
    auth_failures_per_address: float = Field(
        default=1.0,
        ge=0,
        description="failed authentications (401) per second one client address may have at "
        "each worker process, after SEGMENTS_AUTH_FAILURES_BURST; past them its requests for "
        "keyed endpoints are 429 rate_limited, keys unchecked, until it is back under (0: no limit)",
    )
    auth_failures_burst: int = Field(
        default=20, ge=1, description="failed authentications an address may have at once"
    )
    worker_healthcheck_seconds: int = Field(
        default=30,
        ge=1,
        le=600,
        description="how long uvicorn waits for a worker to answer its health ping before "
        "killing and restarting it (`--workers` above 1)",
    )
    idempotency_hours: float = Field(
        default=24,
        gt=0,
        le=24 * 30,
        description="how long an Idempotency-Key is kept: a retry within it answers the first "
        "answer and stores nothing",
    )
    shutdown_grace_seconds: int = Field(
        default=25,
        ge=1,
        le=600,
        description="after SIGTERM, how long in-flight requests may finish (new connections are "
        "refused at once); streams still running then are cut (`segments serve`)",
    )
    http_header_timeout_seconds: float = Field(
        default=30,
        gt=0,
        le=600,
        description="a client must send a request's headers within this of connecting (or of "
        "its previous answer), else 408 and disconnected (`segments serve`)",
    )
    http_keep_alive_seconds: int = Field(
        default=5,
        ge=1,
        le=600,
        description="an idle kept-alive connection is closed after this (`segments serve`)",
    )
    max_connections_per_worker: int = Field(
        default=4096,
        ge=1,
        description="connections a worker holds at once; one more is answered 503 "
        "too_many_connections and closed (`segments serve` raises the open-files limit to fit)",
    )

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, url: SecretStr | None) -> SecretStr | None:
        if url is None or not url.get_secret_value():
            return None
        try:
            scheme = make_url(url.get_secret_value()).drivername
        except ArgumentError:
            scheme = None
        if scheme not in POSTGRES_SCHEMES:
            # the URL itself may hold a password: name only what is wrong with it
            raise ValueError(
                "must be a PostgreSQL URL such as postgresql://user:password@host:5432/db "
                f"(got {'an unreadable URL' if scheme is None else f'scheme {scheme}'}); unset it "
                "to use the embedded PostgreSQL"
            )
        return url

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower_case(cls, level: object) -> object:
        return level.lower() if isinstance(level, str) else level

    @field_validator("phone_default_region")
    @classmethod
    def _known_region(cls, region: str | None) -> str | None:
        if region is None:
            return None
        if region.upper() not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"{region!r} is not a region phonenumbers knows (e.g. GB, US, DE)")
        return region.upper()

    @property
    def database(self) -> URL:
        """The database as a SQLAlchemy URL for psycopg 3 (postgres:// and postgresql:// too).
        Only for settings with a DATABASE_URL: `app.store.embedded` supplies one otherwise."""
        if self.database_url is None:
            raise RuntimeError("no DATABASE_URL: start the embedded PostgreSQL first")
        return make_url(self.database_url.get_secret_value()).set(drivername="postgresql+psycopg")

    def with_database(self, url: str | URL) -> Settings:
        """These settings on another database (the embedded server's, a test database)."""
        text = url.render_as_string(hide_password=False) if isinstance(url, URL) else url
        return self.model_copy(update={"database_url": SecretStr(text)})

    def api_key_config(self) -> str:
        """The key entries from SEGMENTS_API_KEYS and SEGMENTS_API_KEYS_FILE together."""
        text = self.api_keys.get_secret_value()
        if self.api_keys_file is not None:
            text += "\n" + self.api_keys_file.read_text()
        return text
