"""A client generated from a running service's /openapi.json (openapi-python-client) assigns,
reads and pages against that real server: the document is good enough for code generators."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import httpx2
import pytest
from openapi_python_client import generate
from openapi_python_client.config import Config, ConfigFile, MetaType

from app.auth.keys import Scope, generate_key, key_config_line
from tests.api.test_assignments import CHAMPION, LAPSED
from tests.conftest import clear_tables
from tests.servers import segments_server

pytestmark = pytest.mark.slow
PACKAGE = "generated_segments_client"


def generated_client(document: Path, folder: Path) -> Any:
    """The package openapi-python-client writes for `document`, imported."""
    config = Config.from_sources(
        # no post hooks: they format the code with whatever ruff is on PATH, which is not the point
        ConfigFile(post_hooks=[]),
        MetaType.NONE,
        document,
        "utf-8",
        True,
        folder / PACKAGE,
    )
    problems = generate(config=config)
    assert not problems, [f"{p.header}: {p.detail}" for p in problems]
    sys.path.insert(0, str(folder))
    try:
        return importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(folder))


def test_a_generated_client_assigns_reads_and_pages(
    database_url: str, rfm_model_dir: Path, tmp_path: Path
) -> None:
    clear_tables(database_url)
    key = generate_key()
    keys = key_config_line("generated", key, list(Scope))
    env = {"SEGMENTS_API_KEYS": keys, "SEGMENTS_ALLOW_ANONYMOUS": "false"}
    with segments_server(database_url, rfm_model_dir, tmp_path, workers=1, **env) as service:
        document = tmp_path / "openapi.json"
        document.write_bytes(httpx2.get(f"{service.base}/openapi.json", timeout=10).content)
        package = generated_client(document, tmp_path)
        try:
            api = importlib.import_module(f"{PACKAGE}.api")
            assign = importlib.import_module(f"{PACKAGE}.api.assignments.assign")
            assign_batch = importlib.import_module(f"{PACKAGE}.api.assignments.assign_batch")
            current = importlib.import_module(f"{PACKAGE}.api.customers.current_segment")
            members = importlib.import_module(f"{PACKAGE}.api.segments.segment_members")
            models = importlib.import_module(f"{PACKAGE}.models")
            assert api is not None
            # closed afterwards: the generated client holds an httpx connection pool
            with package.AuthenticatedClient(base_url=service.base, token=key) as client:
                # one customer, typed by the served model's features
                features = models.Features(recency_days=2, frequency=25, monetary=9000.0)
                one = assign.sync(client=client, body=models.CustomerIn("gen-0", features))
                assert isinstance(one, models.AssignmentOut), one
                assert one.customer_id == "gen-0"
                assert one.segment.key == "champions"
                assert one.model_version == "test-rfm-k4"

                # a batch, with identifiers and consent
                batch = models.BatchIn(
                    [
                        models.CustomerIn(
                            f"gen-{i}",
                            models.Features.from_dict(CHAMPION if i % 2 else LAPSED),
                            consent=models.ConsentIn(advertising=True),
                        )
                        for i in range(1, 26)
                    ]
                )
                stored = assign_batch.sync(client=client, body=batch)
                assert isinstance(stored, models.BatchOut), stored
                assert len(stored.assignments) == 25

                # read one back; an unknown customer is a typed error, not an exception
                read = current.sync("gen-0", client=client)
                assert isinstance(read, models.AssignmentOut)
                assert read.segment.key == "champions"
                missing = current.sync("nobody", client=client)
                assert isinstance(missing, models.ErrorOut)
                assert missing.error.code == "customer_not_found"

                # page the champions' audience, five at a time, to the end
                seen: list[str] = []
                cursor: Any = None
                for _ in range(10):
                    page = members.sync(
                        "champions",
                        client=client,
                        limit=5,
                        **({"cursor": cursor} if cursor else {}),
                    )
                    assert isinstance(page, models.MembersOut), page
                    seen.extend(page.members)
                    cursor = page.next_cursor
                    if cursor is None:
                        break
                expected = {"gen-0"} | {f"gen-{i}" for i in range(1, 26) if i % 2}
                assert seen == sorted(expected)
        finally:
            for name in [m for m in sys.modules if m.split(".")[0] == PACKAGE]:
                del sys.modules[name]
