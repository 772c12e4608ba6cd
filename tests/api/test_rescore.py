"""Re-score on activation: after a model switch every stored customer is re-segmented by the new
model, in chunks, resumable after a kill; until then each read answers the segment of the model
that made it. On the real store, with the service's clock set by the test."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import create_engine, text
from starlette.testclient import TestClient
from typer.testing import CliRunner

from app.cli import cli
from app.clock import ManualClock
from app.main import create_app
from app.scoring.model import SegmentModel
from app.settings import PROJECT_ROOT
from tests.api.test_events import event
from tests.conftest import TEST_ERASURE_KEY, clear_tables, make_settings, metric_value

TODAY = datetime(2024, 7, 1, 9, tzinfo=UTC)
WITH_EVENTS = 240  # customers whose segment comes from purchase events
FROM_FEATURES = 60  # customers known only from features sent to them


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(TODAY)


@pytest.fixture
def settings_k4(database_url: str, rfm_model_dir: Path) -> Any:
    return make_settings(
        database_url, rfm_model_dir, refresh_seconds=3600, refresh_chunk=50, model_poll_seconds=60
    )


@pytest.fixture
def shop(database_url: str, settings_k4: Any, clock: ManualClock) -> Iterator[TestClient]:
    """test-rfm-k4 serving 240 customers from events and 60 from sent features."""
    clear_tables(database_url)
    with TestClient(create_app(settings_k4, clock)) as client:
        rng = np.random.default_rng(3)
        events = []
        for i in range(WITH_EVENTS):
            for order in range(1 + i % 7):
                day = (TODAY - timedelta(days=int(rng.integers(1, 300)))).date()
                events.append(
                    event(
                        f"e{i}-{order}",
                        f"ev-{i:03d}",
                        day,
                        float(rng.gamma(2, 60)),
                        order_id=f"o{i}-{order}",
                    )
                )
        for start in range(0, len(events), 500):
            assert (
                client.post("/v1/events", json={"events": events[start : start + 500]}).status_code
                == 200
            )
        sent = [
            {
                "customer_id": f"ft-{i:03d}",
                "features": {
                    "recency_days": float(rng.integers(0, 360)),
                    "frequency": int(rng.integers(1, 30)),
                    "monetary": float(rng.gamma(2, 300)),
                },
            }
            for i in range(FROM_FEATURES)
        ]
        assert client.post("/v1/assignments/batch", json={"customers": sent}).status_code == 200
        yield client


def register(database_url: str, model_dir: Path) -> None:
    result = CliRunner().invoke(
        cli, ["models", "register", str(model_dir)], env={"DATABASE_URL": database_url}
    )
    assert result.exit_code == 0, result.output


def memberships(database_url: str) -> dict[str, tuple[str, str]]:
    engine = create_engine(database_url)
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT customer_id, model_version, segment_key FROM memberships")
        ).all()
    engine.dispose()
    return {r[0]: (r[1], r[2]) for r in rows}


def model_moves(database_url: str) -> list[tuple[str, str]]:
    engine = create_engine(database_url)
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT customer_id, event FROM membership_events WHERE cause = 'model'")
        ).all()
    engine.dispose()
    return [(r[0], r[1]) for r in rows]


def expected_k5(client: TestClient, model_dir: Path, database_url: str) -> dict[str, str]:
    """What test-rfm-k5 says of every stored customer: from their features as of today (events)
    or the features sent to them."""
    model = SegmentModel.load(model_dir)
    engine = create_engine(database_url)
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT DISTINCT ON (customer_id) customer_id, features FROM assignments "
                "ORDER BY customer_id, assigned_at DESC, id DESC"
            )
        ).all()
    engine.dispose()
    customers = [r[0] for r in rows]
    numeric = np.array(
        [[r[1]["recency_days"], r[1]["frequency"], r[1]["monetary"]] for r in rows],
        dtype=np.float64,
    )
    clusters = model.score_arrays(numeric, []).clusters.tolist()
    return {c: model.segment_keys_by_cluster[k] for c, k in zip(customers, clusters, strict=True)}


_KILLED_MID_CHUNK = textwrap.dedent(
    """
    # A re-score that claims a chunk, scores and stores it, and is killed before it commits.
    import sys
    from datetime import datetime
    from pathlib import Path
    from sqlalchemy import create_engine
    from app.audience.erasure import IdHasher
    from app.lifecycle.holder import ModelHolder
    from app.lifecycle.shadow import ShadowScorer
    from app.scoring.model import SegmentModel
    from app.service.activity import rescore
    from app.store.assignments import store_batch
    from app.store.events import set_due
    from app.store.rescoring import claim_activity_behind
    from app.store.tables import Cause

    url, model_dir, now = sys.argv[1], Path(sys.argv[2]), datetime.fromisoformat(sys.argv[3])
    model = SegmentModel.load(model_dir)
    engine = create_engine(url)
    with engine.begin() as conn:
        behind = claim_activity_behind(conn, model.version, "", 80)
        rescored = rescore(model, {a.customer_id: a for a in behind}, {}, now,
                           ShadowScorer(ModelHolder(model), 1.0))
        store_batch(conn, rescored.assignments, IdHasher(sys.argv[4]), Cause.MODEL)
        set_due(conn, rescored.due)
        print(len(behind), flush=True)
        sys.stdin.read()  # killed here, mid-chunk, holding its rows
    """
)


def test_activation_re_segments_every_customer_resumably_and_reads_never_mix_models(
    shop: TestClient,
    database_url: str,
    rfm_model_b: Path,
    settings_k4: Any,
    clock: ManualClock,
) -> None:
    before = memberships(database_url)
    assert len(before) == WITH_EVENTS + FROM_FEATURES
    assert {version for version, _ in before.values()} == {"test-rfm-k4"}
    register(database_url, rfm_model_b)
    with TestClient(
        create_app(settings_k4, clock)
    ) as stale_worker:  # its watcher polls each minute
        activated = shop.post("/v1/models/test-rfm-k5/activate")
        assert activated.status_code == 200, activated.text
        body = activated.json()
        # trained without --previous: said, with the share of customers that would move
        assert "was not retrained from the active test-rfm-k4" in body["warning"]
        assert 0 < body["moved_share"] <= 1
        # a worker still serving test-rfm-k4 re-scores nobody with the model it replaced
        assert stale_worker.app_state["runtime"].models.model.version == "test-rfm-k4"
        assert stale_worker.app_state["runtime"].refresher.refresh_due() == 0
    # until re-scored, a customer answers the segment (and its name) of the model that made it
    k4 = SegmentModel.load(settings_k4.model_dir)
    customer = "ev-000"
    answer = shop.get(f"/v1/customers/{customer}/segment").json()
    assert answer["model_version"] == "test-rfm-k4"
    assert answer["segment"]["name"] == k4.segment_names[answer["segment"]["key"]]

    # and no audience of the new model lists a customer the old one segmented
    assert audience_sizes(shop) == {}

    # a re-score is killed mid-chunk, holding rows it had already scored and stored
    with subprocess.Popen(
        [
            sys.executable,
            "-c",
            _KILLED_MID_CHUNK,
            database_url,
            str(rfm_model_b),
            clock.now().isoformat(),
            TEST_ERASURE_KEY,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=PROJECT_ROOT,
        text=True,
    ) as killed:
        assert killed.stdout is not None
        line = killed.stdout.readline()
        assert line, "the re-score to kill did not start: run the script by hand"
        assert int(line) == 80
        killed.kill()
    # the service's refresher resumes: chunks of 50, skipping nothing for good
    refresher = shop.app_state["runtime"].refresher
    done = 0
    for _ in range(50):
        done += refresher.rescore_behind()
        if refresher.progress is not None and refresher.progress.done:
            break
    assert done == WITH_EVENTS + FROM_FEATURES
    after = memberships(database_url)
    assert {version for version, _ in after.values()} == {"test-rfm-k5"}
    assert {c: key for c, (_, key) in after.items()} == expected_k5(shop, rfm_model_b, database_url)
    moves = model_moves(database_url)
    moved = {c for c, _ in moves}
    assert len(moves) == 2 * len(moved)  # one exited and one entered each: the kill left none
    ready = shop.get("/readyz").json()
    assert ready["rescore"] == {
        "model_version": "test-rfm-k5",
        "behind": 0,
        "unscorable": 0,
        "done": True,
    }
    assert metric_value(shop.get("/metrics").text, "segment_rescore_behind") == 0
    answer = shop.get(f"/v1/customers/{customer}/segment").json()
    assert answer["model_version"] == "test-rfm-k5"
    assert sum(audience_sizes(shop).values()) == WITH_EVENTS + FROM_FEATURES


def audience_sizes(client: TestClient) -> dict[str, int]:
    """Members of each of the served model's segments (personalization), those with any."""
    sizes = {}
    for segment in client.get("/v1/segments").json()["segments"]:
        page = client.get(f"/v1/segments/{segment['key']}/members?limit=1000").json()
        if page["members"]:
            sizes[segment["key"]] = len(page["members"])
    return sizes


def test_segments_rescore_does_it_by_hand(
    shop: TestClient, database_url: str, rfm_model_b: Path
) -> None:
    register(database_url, rfm_model_b)
    result = CliRunner().invoke(
        cli, ["models", "activate", "test-rfm-k5"], env={"DATABASE_URL": database_url}
    )
    assert result.exit_code == 0, result.output
    assert "was not retrained from the active test-rfm-k4" in " ".join(result.output.split())
    result = CliRunner().invoke(
        cli,
        ["rescore"],
        env={
            "DATABASE_URL": database_url,
            "SEGMENTS_ERASURE_KEY": TEST_ERASURE_KEY,
            "SEGMENTS_MODEL_DIR": str(rfm_model_b),
        },
    )
    assert result.exit_code == 0, result.output
    assert f"re-scored {WITH_EVENTS + FROM_FEATURES:,} customers with test-rfm-k5" in " ".join(
        result.output.split()
    )
    assert {v for v, _ in memberships(database_url).values()} == {"test-rfm-k5"}
