"""deploy/compose/ without Docker: the compose file, Prometheus' config and Grafana's provisioning
agree with each other and with the service (its Settings, the images ``make images`` builds, the
sandbox uid, the dashboard and alert files), so ``docker compose up`` has nothing left to guess."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from moorage.sandbox.docker import SANDBOX_UID
from moorage.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "deploy" / "compose"
OBSERVABILITY = ROOT / "deploy" / "observability"
VARIABLE = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?::?([-?])([^}]*))?\}")
# What an operator puts in .env where env.example leaves a value empty.
FILLED = {"DOCKER_GID": "998", "ANTHROPIC_API_KEY": "sk-ant-example"}
NOT_SETTINGS = {"TMPDIR", "HOME"}  # the process environment, not the service's settings
Json = dict[str, Any]


def env_example() -> dict[str, str]:
    lines = (COMPOSE_DIR / "env.example").read_text().splitlines()
    pairs = [line.split("=", 1) for line in lines if line.strip() and not line.startswith("#")]
    return {name: value or FILLED.get(name, "") for name, value in pairs}


def interpolate(text: str, values: dict[str, str]) -> str:
    """Compose's ``${NAME}``, ``${NAME:-default}`` and ``${NAME:?error}`` with ``values`` as .env."""

    def one(match: re.Match[str]) -> str:
        name, kind, rest = match.groups()
        if values.get(name):
            return values[name]
        if kind == "?":
            raise AssertionError(f"{name} is required: {rest}")
        return rest if kind == "-" else ""

    return VARIABLE.sub(one, text)


def compose(values: dict[str, str] | None = None) -> Json:
    text = (COMPOSE_DIR / "compose.yaml").read_text()
    loaded: Json = yaml.safe_load(interpolate(text, env_example() if values is None else values))
    return loaded


def load(path: Path) -> Json:
    loaded: Json = yaml.safe_load(path.read_text())
    return loaded


def mounts(service: Json) -> dict[str, str]:
    """target -> source of a service's short-syntax volumes (``:ro`` dropped)."""
    found = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        found[target] = source
    return found


def moorage_settings(monkeypatch: pytest.MonkeyPatch, environment: dict[str, str]) -> Settings:
    """The Settings the service in the container would read."""
    for name in [n for n in os.environ if n.startswith(("MOORAGE_", "ANTHROPIC_"))]:
        monkeypatch.delenv(name)
    for name, value in environment.items():
        monkeypatch.setenv(name, str(value))
    return Settings()


def test_every_variable_is_in_env_example_and_the_required_ones_are_enforced() -> None:
    text = (COMPOSE_DIR / "compose.yaml").read_text()
    used = {match.group(1) for match in VARIABLE.finditer(text)}
    assert used <= set(env_example()), used - set(env_example())
    with pytest.raises(AssertionError, match="DOCKER_GID"):
        compose({**env_example(), "DOCKER_GID": ""})
    with pytest.raises(AssertionError, match="MOORAGE_API_KEYS"):
        compose({**env_example(), "MOORAGE_API_KEYS": ""})


def test_every_image_is_pinned_and_ours_are_what_make_images_builds() -> None:
    version = re.search(r'^version = "(.+)"$', (ROOT / "service" / "pyproject.toml").read_text(), re.MULTILINE)
    assert version is not None
    for name, service in compose()["services"].items():
        image = service["image"]
        if "@sha256:" in image:  # pinned by digest
            continue
        repository, _, tag = image.rpartition(":")
        assert repository and re.match(r"^v?\d+(\.\d+)+", tag), f"{name}: {image} is not pinned to a version"
        if repository.startswith("moorage-"):
            assert image == f"moorage-service:{version.group(1)}", name
    assert compose()["services"]["postgres"]["image"].startswith("postgres:16.")


def test_the_service_environment_is_real_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    environment = compose()["services"]["moorage"]["environment"]
    fields = set(Settings.model_fields)
    aliases = {"ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"}
    unknown = [
        name
        for name in environment
        if name not in NOT_SETTINGS
        and name not in aliases
        and not (name.startswith("MOORAGE_") and name.removeprefix("MOORAGE_").lower() in fields)
    ]
    assert unknown == []
    settings = moorage_settings(monkeypatch, environment)  # every value valid, too
    assert settings.sandbox == "docker"
    assert settings.host == settings.metrics_host == "0.0.0.0"
    assert settings.metrics_port and settings.metrics_port != settings.port
    assert settings.replica_id, "a stable owner label for the sandboxes it must reap after re-creation"
    assert urlsplit(settings.database_url).hostname == "postgres"
    assert settings.api_keys, "a non-loopback bind refuses to start without keys or tokens"


def test_sandboxes_can_be_mounted_from_host_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine resolves bind mounts on the host: the state dir (workspaces, and the proxy
    sockets in TMPDIR) is at the same path inside and out, the socket is the one the backend uses,
    and the service runs as the sandbox uid (it makes the workspaces; it is not root)."""
    services = compose()["services"]
    service = services["moorage"]
    settings = moorage_settings(monkeypatch, service["environment"])
    state = str(settings.state_dir)
    assert mounts(service)[state] == state
    assert Path(service["environment"]["TMPDIR"]).is_relative_to(state)
    docker = urlsplit(settings.docker_url)
    assert docker.scheme == "unix" and mounts(service)[docker.path] == "/var/run/docker.sock"
    assert service["user"] == f"{SANDBOX_UID}:{SANDBOX_UID}"
    assert "--uid 1000" in (ROOT / "container" / "Dockerfile").read_text() and SANDBOX_UID == 1000
    assert service["command"] == ["moorage", "serve"] and compose({**env_example(), "MOORAGE_MODE": "demo"})[
        "services"
    ]["moorage"]["command"] == ["moorage", "demo"]
    owner = services["moorage-state"]
    assert mounts(owner)[state] == state and f"chown {SANDBOX_UID}:{SANDBOX_UID} {state}" in owner["entrypoint"][-1]
    assert service["depends_on"]["moorage-state"]["condition"] == "service_completed_successfully"


def test_ports_volumes_and_dependencies_exist(monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = compose()
    services = loaded["services"]
    settings = moorage_settings(monkeypatch, services["moorage"]["environment"])
    published = [port.split(":") for port in services["moorage"]["ports"]]
    assert published == [["127.0.0.1", str(settings.port), str(settings.port)]]  # the metrics port stays inside
    assert str(settings.metrics_port) in services["moorage"]["healthcheck"]["test"][-1]
    named = set(loaded["volumes"])
    for name, service in services.items():
        for target, source in mounts(service).items():
            assert target.startswith("/"), f"{name}: {target}"
            if source.startswith("."):
                assert (COMPOSE_DIR / source).exists(), f"{name}: {source} does not exist"
            elif not source.startswith("/"):
                assert source in named, f"{name}: volume {source} is not declared"
        for needed in service.get("depends_on", []):
            assert needed in services, f"{name} depends on {needed}"
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name}: {port} is published beyond this host"
    database = urlsplit(settings.database_url)
    postgres = services["postgres"]["environment"]
    assert (database.username, database.password, database.path) == (
        postgres["POSTGRES_USER"],
        postgres["POSTGRES_PASSWORD"],
        "/" + postgres["POSTGRES_DB"],
    )


def test_prometheus_scrapes_the_metrics_port_and_loads_the_alerts(monkeypatch: pytest.MonkeyPatch) -> None:
    services = compose()["services"]
    settings = moorage_settings(monkeypatch, services["moorage"]["environment"])
    prometheus = services["prometheus"]
    config_path = next(a for a in prometheus["command"] if a.startswith("--config.file=")).split("=", 1)[1]
    config = load(COMPOSE_DIR / mounts(prometheus)[config_path])
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "moorage"  # the up alerts select it
    assert job["metrics_path"] == "/metrics"
    (target,) = [t for group in job["static_configs"] for t in group["targets"]]
    assert target == f"moorage:{settings.metrics_port}"
    (rules,) = config["rule_files"]
    assert (COMPOSE_DIR / mounts(prometheus)[rules]).resolve() == (OBSERVABILITY / "alerts.yaml").resolve()


def test_grafana_is_provisioned_with_prometheus_and_the_dashboard() -> None:
    services = compose()["services"]
    grafana = mounts(services["grafana"])
    provisioning = COMPOSE_DIR / grafana["/etc/grafana/provisioning"]
    (source,) = load(provisioning / "datasources" / "prometheus.yaml")["datasources"]
    url = urlsplit(source["url"])
    assert source["type"] == "prometheus" and source["isDefault"] is True
    assert url.hostname == "prometheus" and url.port == int(services["prometheus"]["ports"][0].split(":")[-1])
    (provider,) = load(provisioning / "dashboards" / "moorage.yaml")["providers"]
    dashboards = [target for target in grafana if target.startswith(provider["options"]["path"] + "/")]
    assert len(dashboards) == 1
    dashboard = (COMPOSE_DIR / grafana[dashboards[0]]).resolve()
    assert dashboard == (OBSERVABILITY / "grafana-dashboard.json").resolve() and dashboard.is_file()
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == dashboards[0]
