"""Static checks of the Dockerfile, docker-compose.yml and deploy/ (no Docker needed)."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from mailsvc.cli import build_parser
from mailsvc.config import Settings
from mailsvc.worker.queues import ROLES

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "mailsvc.json"

EXPECTED_SERVICES = {
    "api",
    "worker-realtime",
    "worker-bulk",
    "worker-scheduled",
    "worker-retry",
    "beat",
    "flower",
    "postgres",
    "redis",
    "mailpit",
    "prometheus",
    "grafana",
    "migrate",
}
WORKER_ROLES = {"realtime", "bulk", "scheduled", "retry"}


# -- helpers ----------------------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def _services() -> dict[str, dict[str, Any]]:
    services = _compose()["services"]
    assert isinstance(services, dict)
    return services


def _mailsvc_services() -> dict[str, dict[str, Any]]:
    """The services built from ./Dockerfile."""
    return {name: svc for name, svc in _services().items() if "build" in svc}


def _env_names(environment: Any) -> list[str]:
    if environment is None:
        return []
    if isinstance(environment, dict):
        return [str(name) for name in environment]
    assert isinstance(environment, list), environment
    return [str(item).split("=", 1)[0] for item in environment]


def _parse(command: list[str]) -> Any:
    try:
        return build_parser().parse_args(command)
    except SystemExit as exc:  # argparse exits on a bad command line
        pytest.fail(f"`mailsvc {shlex.join(command)}` does not parse: exit {exc.code}")


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) for each Dockerfile instruction, continuations joined."""
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    assert not pending, "the Dockerfile ends in a line continuation"
    result = []
    for line in lines:
        keyword, _, rest = line.partition(" ")
        result.append((keyword.upper(), rest.strip()))
    return result


def _final_stage() -> list[tuple[str, str]]:
    instructions = _instructions()
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def _exec_form(arguments: str) -> list[str]:
    parsed = json.loads(arguments)
    assert isinstance(parsed, list), arguments
    assert all(isinstance(part, str) for part in parsed), arguments
    return parsed


def _copy_sources(arguments: str) -> Iterator[str] | None:
    """The local sources of a COPY, or None for COPY --from=<stage>."""
    if arguments.startswith("["):
        words = _exec_form(arguments)
    else:
        words = shlex.split(arguments)
    flags = [word for word in words if word.startswith("--")]
    if any(flag.startswith("--from") for flag in flags):
        return None
    paths = [word for word in words if not word.startswith("--")]
    assert len(paths) >= 2, f"COPY {arguments}: needs a source and a destination"
    return iter(paths[:-1])


# -- docker-compose.yml -------------------------------------------------------------------------


def test_compose_has_every_service() -> None:
    services = _services()
    missing = EXPECTED_SERVICES - set(services)
    assert not missing, f"services missing from docker-compose.yml: {sorted(missing)}"


def test_mailsvc_services_are_built_from_the_dockerfile() -> None:
    built = _mailsvc_services()
    expected = {"api", "migrate", "beat"} | {f"worker-{role}" for role in WORKER_ROLES}
    assert expected <= set(built), f"not built from ./Dockerfile: {sorted(expected - set(built))}"
    for name, service in built.items():
        build = service["build"]
        context = build if isinstance(build, str) else build.get("context", ".")
        dockerfile = (
            "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        )
        assert (ROOT / context / dockerfile).is_file(), f"{name}: {context}/{dockerfile} is missing"


def test_mailsvc_commands_parse() -> None:
    for name, service in _mailsvc_services().items():
        command = service.get("command")
        assert isinstance(command, list), f"{name}: give the command in exec (list) form"
        command = [str(part) for part in command]
        args = _parse(command)
        if args.command == "worker":
            assert args.role in ROLES, f"{name}: unknown role {args.role!r}"
            assert args.role != "all", f"{name}: run one worker per role, not 'all'"


def test_one_worker_per_role() -> None:
    roles: dict[str, str] = {}
    for name, service in _mailsvc_services().items():
        args = _parse([str(part) for part in service["command"]])
        if args.command == "worker":
            assert args.role not in roles, f"{name} and {roles[args.role]} share a role"
            roles[args.role] = name
    assert set(roles) == WORKER_ROLES
    assert WORKER_ROLES <= set(ROLES)
    for role, name in roles.items():
        assert name == f"worker-{role}"


def test_specific_commands() -> None:
    services = _services()
    api = _parse([str(part) for part in services["api"]["command"]])
    assert (api.command, api.host, api.port) == ("api", "0.0.0.0", 8000)  # noqa: S104
    migrate = _parse([str(part) for part in services["migrate"]["command"]])
    assert (migrate.command, migrate.db) == ("db", "upgrade")
    assert str(services["migrate"].get("restart")) == "no"


def test_api_waits_for_migrations_and_redis() -> None:
    depends_on = _services()["api"]["depends_on"]
    assert depends_on["migrate"]["condition"] == "service_completed_successfully"
    assert depends_on["redis"]["condition"] == "service_healthy"
    migrate_deps = _services()["migrate"]["depends_on"]
    assert migrate_deps["postgres"]["condition"] == "service_healthy"


def test_mailsvc_env_vars_are_settings_fields() -> None:
    seen = set()
    for name, service in _services().items():
        for var in _env_names(service.get("environment")):
            if var.startswith("MAILSVC_"):
                field = var[len("MAILSVC_") :].lower()
                assert field in Settings.model_fields, f"{name}: {var} is not a Settings field"
                seen.add(var)
    required = {
        "MAILSVC_DATABASE_URL",
        "MAILSVC_REDIS_URL",
        "MAILSVC_JWT_SECRET",
        "MAILSVC_SMTP_HOST",
        "MAILSVC_SMTP_PORT",
        "MAILSVC_ENV",
    }
    assert required <= seen, f"never set: {sorted(required - seen)}"


def test_every_mailsvc_service_gets_the_shared_env() -> None:
    for name, service in _mailsvc_services().items():
        names = set(_env_names(service.get("environment")))
        assert {"MAILSVC_DATABASE_URL", "MAILSVC_REDIS_URL", "MAILSVC_JWT_SECRET"} <= names, name


def test_exactly_one_beat() -> None:
    services = _services()
    beats = [
        name
        for name, service in _mailsvc_services().items()
        if _parse([str(part) for part in service["command"]]).command == "beat"
    ]
    assert beats == ["beat"]
    beat = services["beat"]
    replicas = (beat.get("deploy") or {}).get("replicas", 1)
    assert int(replicas) == 1
    assert int(beat.get("scale", 1)) == 1


def test_bind_mounts_exist() -> None:
    for name, service in _services().items():
        for volume in service.get("volumes", []):
            if isinstance(volume, dict):
                source = str(volume.get("source", "")) if volume.get("type") == "bind" else ""
            else:
                source = str(volume).split(":", 1)[0]
            if source.startswith(("./", "../")):
                assert (ROOT / source).exists(), f"{name}: {source} does not exist"


def test_flower_points_at_the_broker() -> None:
    flower = _services()["flower"]
    assert "build" not in flower
    environment = flower["environment"]
    assert str(environment["CELERY_BROKER_URL"]).startswith("redis://redis:")
    assert str(environment["FLOWER_PORT"]) == "5555"


# -- Dockerfile -----------------------------------------------------------------------------------


def test_dockerfile_is_multi_stage() -> None:
    froms = [arguments for keyword, arguments in _instructions() if keyword == "FROM"]
    assert len(froms) >= 2
    assert all(arguments.startswith("python:3.11-slim") for arguments in froms)


def test_dockerfile_runs_as_non_root() -> None:
    users = [arguments for keyword, arguments in _final_stage() if keyword == "USER"]
    assert users, "the final stage sets no USER"
    user = users[-1].split(":", 1)[0].strip()
    assert user not in ("", "root", "0")


def test_dockerfile_entrypoint_and_cmd() -> None:
    final = dict(_final_stage())
    assert _exec_form(final["ENTRYPOINT"]) == ["mailsvc"]
    args = _parse(_exec_form(final["CMD"]))
    assert args.command == "api"
    assert "HEALTHCHECK" in final
    assert "/healthz" in final["HEALTHCHECK"]


def test_dockerfile_copy_sources_exist() -> None:
    checked = 0
    for keyword, arguments in _instructions():
        if keyword not in ("COPY", "ADD"):
            continue
        sources = _copy_sources(arguments)
        if sources is None:
            continue
        for source in sources:
            assert not re.match(r"^[a-z]+://", source), f"{keyword} {arguments}: a URL"
            assert (ROOT / source).exists(), f"{keyword} {arguments}: {source} is not in the repo"
            checked += 1
    assert checked


def test_dockerignore_keeps_the_copied_sources() -> None:
    ignored = {
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".venv", ".mailsvc", ".git"} <= ignored
    for keyword, arguments in _instructions():
        sources = _copy_sources(arguments) if keyword == "COPY" else None
        for source in sources or ():
            assert source.rstrip("/") not in ignored, f"{source} is copied but in .dockerignore"


# -- Prometheus and Grafana -------------------------------------------------------------------


def test_prometheus_scrapes_the_api() -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    api = jobs["mailsvc-api"]
    assert api.get("metrics_path", "/metrics") == "/metrics"
    targets = [target for static in api["static_configs"] for target in static["targets"]]
    assert "api:9100" in targets  # the metrics port, not the API's own
    api_command = _services()["api"]["command"]
    assert api_command[api_command.index("--metrics-port") + 1] == "9100"


def test_grafana_provisioning_parses() -> None:
    provisioning = ROOT / "deploy" / "grafana" / "provisioning"
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    (datasource,) = datasources["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    dashboards = yaml.safe_load((provisioning / "dashboards" / "mailsvc.yml").read_text())
    paths = [provider["options"]["path"] for provider in dashboards["providers"]]
    mounted = [str(volume) for volume in _services()["grafana"]["volumes"]]
    for path in paths:
        assert any(volume.split(":")[1] == path for volume in mounted), path


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def test_grafana_dashboard_queries_mailsvc_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"]
    assert dashboard["uid"]
    exprs = []
    for panel in _panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            expr = target["expr"]
            assert re.search(r"\bmailsvc_\w+", expr), f"{panel['title']}: {expr}"
            exprs.append(expr)
    text = "\n".join(exprs)
    for metric in (
        "mailsvc_messages_accepted_total",
        "mailsvc_messages_sent_total",
        "mailsvc_messages_failed_total",
        "mailsvc_http_request_duration_seconds_bucket",
    ):
        assert metric in text, f"no panel queries {metric}"
    assert "histogram_quantile(0.99" in text
