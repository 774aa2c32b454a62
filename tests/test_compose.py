"""docker-compose.yml, checked with a real compose parser (Debian's docker-compose v1 renders it without an engine).

Every service command must name something that exists: the Celery app, its subcommands with their options,
the `wre` subcommands; and the file must keep its promises (append-only Redis, one beat, scalable workers,
Flower behind credentials that have no default).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from celery import Celery
from click.testing import CliRunner as ClickRunner
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
SECRETS = {"POSTGRES_PASSWORD": "pg-secret", "FLOWER_USER": "ops", "FLOWER_PASSWORD": "flower-secret"}
SERVICES = {"postgres", "redis", "rabbitmq", "migrate", "worker", "evaluator", "beat", "flower", "exporter"}
WRE_SERVICES = SERVICES - {"postgres", "redis", "rabbitmq"}
CELERY_SUBCOMMANDS = {"worker": "worker", "evaluator": "worker", "beat": "beat", "flower": "flower"}
RENDER_TIMEOUT_SECONDS = 60


def compose_binary() -> str:
    """Debian's docker-compose; skip only where this machine could not have installed it."""
    found = shutil.which("docker-compose")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        pytest.fail(
            "docker-compose is not installed, though this machine (root, apt-get) can install it: "
            "run scripts/ensure-services.sh (make test does), or apt-get install docker-compose"
        )
    pytest.skip("docker-compose is not installed and cannot be (needs root and apt-get)")


def render(**env: str) -> subprocess.CompletedProcess[str]:
    """`docker-compose config` of the file with only ``env`` (and PATH) in the environment."""
    return subprocess.run(
        [compose_binary(), "--file", str(COMPOSE_FILE), "--project-directory", str(REPO), "config"],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
        capture_output=True,
        text=True,
        timeout=RENDER_TIMEOUT_SECONDS,
        cwd=REPO,
    )


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    done = render(**SECRETS)
    assert done.returncode == 0, done.stderr
    rendered = yaml.safe_load(done.stdout)
    return dict(rendered["services"])


def command(service: dict[str, Any]) -> list[str]:
    value = service["command"]
    return list(value) if isinstance(value, list) else shlex.split(value)


def test_renders_every_service_with_its_settings(services: dict[str, Any]) -> None:
    assert set(services) == SERVICES
    for name in WRE_SERVICES:
        service = services[name]
        assert Path(service["build"]["context"]) == REPO, name
        assert service["image"] == services["worker"]["image"], "one image for every wre service"
        database = make_url(service["environment"]["WRE_DATABASE_URL"])
        assert (database.host, database.password) == ("postgres", SECRETS["POSTGRES_PASSWORD"])
        assert make_url(service["environment"]["WRE_BROKER_URL"]).host == "redis"
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == SECRETS["POSTGRES_PASSWORD"]
    assert services["flower"]["environment"]["FLOWER_BASIC_AUTH"] == "ops:flower-secret"


def test_the_rabbitmq_profile(services: dict[str, Any]) -> None:
    """Every wre service takes the broker and queue settings from the shell; RabbitMQ is a profile that
    will not start without its password (which the file cannot require: Redis users do not set it)."""
    rabbitmq = services["rabbitmq"]
    assert rabbitmq["profiles"] == ["rabbitmq"]
    assert any(volume.split(":")[:2] == ["rabbitmq-data", "/var/lib/rabbitmq"] for volume in rabbitmq["volumes"])
    assert "rabbitmq-diagnostics" in rabbitmq["healthcheck"]["test"]
    url = "amqp://wre:mq-secret@rabbitmq:5672//"
    done = render(**SECRETS, RABBITMQ_PASSWORD="mq-secret", WRE_BROKER_URL=url, WRE_QUEUE_TYPE="quorum")
    assert done.returncode == 0, done.stderr
    rendered = yaml.safe_load(done.stdout)["services"]
    assert rendered["rabbitmq"]["environment"]["RABBITMQ_DEFAULT_PASS"] == "mq-secret"
    for name in WRE_SERVICES:
        environment = rendered[name]["environment"]
        assert (environment["WRE_BROKER_URL"], environment["WRE_QUEUE_TYPE"]) == (url, "quorum"), name
    # The start script, as the container's shell runs it (compose turns $$ into $), without the password.
    script = command(rabbitmq)[2].replace("$$", "$")
    refused = subprocess.run(
        ["sh", "-c", script], env={"RABBITMQ_DEFAULT_PASS": ""}, capture_output=True, text=True, timeout=10
    )
    assert refused.returncode == 1 and "set RABBITMQ_PASSWORD" in refused.stderr


@pytest.mark.parametrize("missing", sorted(SECRETS))
def test_refuses_to_render_without_a_secret(missing: str) -> None:
    done = render(**{k: v for k, v in SECRETS.items() if k != missing})
    assert done.returncode != 0
    assert missing in done.stderr


def test_stateful_services_keep_their_data(services: dict[str, Any]) -> None:
    redis = services["redis"]
    assert re.search(r"--appendonly\s+yes", " ".join(command(redis))), "queued runs must survive a restart"
    assert any(volume.split(":")[:2] == ["redis-data", "/data"] for volume in redis["volumes"])
    postgres = services["postgres"]
    assert any(v.split(":")[:2] == ["postgres-data", "/var/lib/postgresql/data"] for v in postgres["volumes"])
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert "redis-cli" in " ".join(redis["healthcheck"]["test"])


def test_start_order(services: dict[str, Any]) -> None:
    migrate = services["migrate"]
    assert command(migrate) == ["wre", "db", "upgrade"]
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert migrate["restart"] == "no", "a one-shot job must not be restarted after it succeeded"
    for name in ("worker", "beat", "exporter"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_workers_scale_and_beat_stays_one(services: dict[str, Any]) -> None:
    worker = services["worker"]
    assert "container_name" not in worker and "ports" not in worker, (
        "a fixed name or host port blocks --scale"
    )
    assert worker.get("deploy", {}).get("replicas", 1) >= 1
    args = command(worker)
    assert "%h" in args[args.index("-n") + 1], "each replica needs its own node name"
    beat = services["beat"]
    # A fixed container name makes `--scale beat=2` an error; replicas says the same to swarm.
    assert beat.get("container_name")
    assert beat.get("deploy", {}).get("replicas", 1) == 1
    assert "ports" not in beat


def test_every_command_names_a_real_entry_point(services: dict[str, Any]) -> None:
    for name in sorted(WRE_SERVICES):
        args = command(services[name])
        if args[0] == "celery":
            _check_celery_command(name, args, services[name])
        else:
            assert args[0] == "wre", f"{name}: unexpected program {args[0]!r}"
            _check_wre_command(args)


def _check_celery_command(name: str, args: list[str], service: dict[str, Any]) -> None:
    import importlib

    from celery.bin.celery import celery as celery_command

    # `--help` after the service's own options, through Celery's real command line (click, in process):
    # click rejects an unknown option before it prints help.
    result = ClickRunner().invoke(celery_command, [*args[1:], "--help"])
    assert result.exit_code == 0, f"{shlex.join(args)}: {result.output}"
    app_module = args[args.index("-A") + 1]
    module = importlib.import_module(app_module)
    app = module.app
    assert isinstance(app, Celery), f"{app_module}.app is not a Celery app"
    subcommand = args[args.index("-A") + 2]
    assert subcommand == CELERY_SUBCOMMANDS[name], f"{name} runs celery {subcommand}"
    if subcommand == "worker":
        # Without -Q a worker consumes the app's queues, whatever WRE_QUEUE_PREFIX names them; the evaluator
        # names its one queue through the same prefix (rendered here without one).
        if name == "evaluator":
            assert args[args.index("-Q") + 1] == "evaluation"
            assert "${WRE_QUEUE_PREFIX:-}evaluation" in COMPOSE_FILE.read_text()
        else:
            assert "-Q" not in args and "--queues" not in args, "fixed queue names would ignore WRE_QUEUE_PREFIX"
    if subcommand == "flower":
        # Flower passes its options to tornado, so --help does not vet them: ask Flower's option table.
        from flower.options import options as flower_options

        for option in [arg for arg in args if arg.startswith("--")]:
            assert option[2:].split("=")[0] in flower_options, f"flower has no option {option}"
        flower_env = [
            key[len("FLOWER_") :].lower() for key in service["environment"] if key.startswith("FLOWER_")
        ]
        assert flower_env and all(key in flower_options for key in flower_env)


def _check_wre_command(args: list[str]) -> None:
    from wre.cli import app

    result = CliRunner().invoke(app, [*args[1:], "--help"])
    assert result.exit_code == 0, f"{shlex.join(args)}: {result.output}"
    assert "Usage" in result.output


def test_dockerfile_copies_every_installed_package() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim$", text, re.MULTILINE)
    assert re.search(r"^RUN pip install \.", text, re.MULTILINE)
    copied = set()
    for sources in re.findall(r"^COPY\s+(.+?)\s+\S+$", text, re.MULTILINE):
        for source in sources.split():
            assert (REPO / source).exists(), f"COPY {source}: no such file"
            copied.add(source)
    pyproject = (REPO / "pyproject.toml").read_text()
    include = re.search(r"^include\s*=\s*\[(.*?)\]", pyproject, re.MULTILINE)
    assert include is not None
    packages = {name.strip().strip('"').rstrip("*") for name in include.group(1).split(",")}
    assert packages <= copied, f"the image misses {packages - copied}"
    assert "pyproject.toml" in copied and "README.md" in copied
