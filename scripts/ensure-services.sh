#!/usr/bin/env bash
# Make sure the Postgres, Redis and RabbitMQ that the tests use answer; start local ones that are installed but
# stopped. Where Postgres or Redis is missing, say what to run and fail; where RabbitMQ is missing, say what to
# run: the tests that run on both brokers then skip their RabbitMQ half (and say so).
set -u

PG_HOST="${WRE_TEST_PG_HOST:-127.0.0.1}"
PG_PORT="${WRE_TEST_PG_PORT:-5432}"
REDIS_HOST="${WRE_TEST_REDIS_HOST:-127.0.0.1}"
REDIS_PORT="${WRE_TEST_REDIS_PORT:-6379}"
AMQP_HOST="${WRE_TEST_AMQP_HOST:-127.0.0.1}"
AMQP_PORT="${WRE_TEST_AMQP_PORT:-5672}"

pg_up() { pg_isready -q -h "$PG_HOST" -p "$PG_PORT" 2>/dev/null; }
redis_up() { [ "$(redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" ping 2>/dev/null)" = "PONG" ]; }
# rabbitmqctl, not just the port: the tests create a vhost of their own with it.
rabbitmq_up() { (exec 3<>"/dev/tcp/$AMQP_HOST/$AMQP_PORT") 2>/dev/null && rabbitmqctl -q status >/dev/null 2>&1; }
wait_for() { for _ in $(seq 1 "${2:-30}"); do "$1" && return 0; sleep 0.5; done; return 1; }

missing=()

if ! command -v pg_isready >/dev/null 2>&1; then
    missing+=("postgres (client tools not installed)")
elif ! pg_up; then
    if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
        version="$(ls /etc/postgresql | sort -V | tail -1)"
        echo "starting the local Postgres cluster $version/main"
        pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
        wait_for pg_up || missing+=("postgres (installed, failed to start)")
    else
        missing+=("postgres")
    fi
fi

if ! command -v redis-cli >/dev/null 2>&1; then
    missing+=("redis (not installed)")
elif ! redis_up; then
    if command -v redis-server >/dev/null 2>&1; then
        echo "starting a local redis-server on $REDIS_HOST:$REDIS_PORT (no persistence)"
        redis-server --daemonize yes --bind "$REDIS_HOST" --port "$REDIS_PORT" --save "" --appendonly no
        wait_for redis_up || missing+=("redis (installed, failed to start)")
    else
        missing+=("redis")
    fi
fi

ensure_rabbitmq() {
    if ! command -v rabbitmq-server >/dev/null 2>&1 || ! command -v rabbitmqctl >/dev/null 2>&1; then
        echo "RabbitMQ is not installed: the RabbitMQ half of the broker tests will skip."
        echo "  install it:  apt-get install rabbitmq-server   (or: docker compose --profile rabbitmq up -d rabbitmq,"
        echo "  then WRE_TEST_AMQP_URL=amqp://127.0.0.1:5672// (guest by default) and rabbitmqctl on the PATH)"
        return 0
    fi
    rabbitmq_up && return 0
    echo "starting the local RabbitMQ (rabbitmq-server -detached)"
    rabbitmq-server -detached >/dev/null 2>&1 || true
    # Erlang takes a few seconds to boot.
    wait_for rabbitmq_up 120 || {
        echo >&2 "RabbitMQ is installed but did not start; the RabbitMQ half of the broker tests will skip."
        echo >&2 "  see: rabbitmq-diagnostics status"
    }
}
ensure_rabbitmq

# tests/test_compose.py parses docker-compose.yml with Debian's docker-compose (v1 renders a file without a
# Docker engine). Install it where we can (root with apt-get, about 20 s and 46 packages on a fresh Debian 12);
# where we cannot, the test skips and says why. An install that fails here makes that test fail, loudly.
ensure_docker_compose() {
    command -v docker-compose >/dev/null 2>&1 && return 0
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "docker-compose is not installed and needs root with apt-get; tests/test_compose.py will skip"
        return 0
    fi
    echo "installing docker-compose (Debian's package) for tests/test_compose.py"
    local log
    log="$(mktemp)"
    export DEBIAN_FRONTEND=noninteractive
    # The package lists may be missing or stale on a fresh machine: update them only when the install fails.
    if ! apt-get install -y -q docker-compose >"$log" 2>&1; then
        apt-get update -q >>"$log" 2>&1
        apt-get install -y -q docker-compose >>"$log" 2>&1 || {
            tail -5 "$log" >&2
            echo >&2 "could not install docker-compose; tests/test_compose.py will fail"
        }
    fi
    rm -f "$log"
}
ensure_docker_compose

if [ ${#missing[@]} -gt 0 ]; then
    echo >&2 "wre's tests need Postgres on $PG_HOST:$PG_PORT and Redis on $REDIS_HOST:$REDIS_PORT."
    echo >&2 "Not available: ${missing[*]}."
    echo >&2 "Start them with:  docker compose up -d postgres redis"
    echo >&2 "or install them:  apt-get install postgresql redis-server"
    echo >&2 "or point the tests elsewhere: WRE_TEST_DATABASE_URL=postgresql://... WRE_TEST_BROKER_URL=redis://..."
    exit 1
fi
echo "postgres and redis answer$(rabbitmq_up && echo ', and rabbitmq')"
