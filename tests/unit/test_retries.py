"""The retry layer's own rules: jittered backoff, and a retry that cannot be published is requeued."""

from __future__ import annotations

import random

import pytest
from celery.exceptions import Reject

from worker.app import create_app
from worker.messages import MessageError, parse_run_kwargs
from worker.retries import (
    ATTEMPT_HEADER,
    INFRA_BACKOFF_MAX_SECONDS,
    Bookkeeping,
    infrastructure_backoff,
    parse_bookkeeping,
    publish_retry,
)
from worker.settings import Settings

# Nothing listens here: a publish is refused (connection refused), as when the broker is away.
DEAD_BROKER_URL = "redis://127.0.0.1:1/0"


def test_backoff_is_jittered_within_half_and_full_step() -> None:
    rng = random.Random(7)
    for retries in range(12):
        step = min(INFRA_BACKOFF_MAX_SECONDS, 0.5 * 2**retries)
        waits = [infrastructure_backoff(retries, rng) for _ in range(200)]
        assert all(step / 2 <= wait <= step for wait in waits)
        assert len({round(wait, 6) for wait in waits}) > 150  # spread, not one instant for every run


def test_a_retry_that_cannot_be_published_requeues_the_delivery() -> None:
    app = create_app(Settings(database_url="sqlite://", broker_url=DEAD_BROKER_URL, result_backend="disabled"))

    @app.task(bind=True, name="wre.test_retry_target")
    def target(self: object, **kwargs: object) -> None:  # pragma: no cover - never run, only its request is used
        return None

    target.push_request(
        id="run-requeue",
        kwargs={"skill_name": "echo"},
        delivery_info={"exchange": "skills", "routing_key": "skills"},
        retries=0,
        called_directly=False,
    )
    try:
        with pytest.raises(Reject) as caught:
            publish_retry(target, Bookkeeping(attempt=2), 0.0, None)
    finally:
        target.pop_request()
    # Celery's own Task.retry rejects without requeue here, and the run is lost.
    assert caught.value.requeue is True
    assert "connect" in str(caught.value.reason).lower(), caught.value.reason


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"skill_name": "s" * 129}, "skill_name must be a non-empty string of at most 128"),
        ({"skill_name": "echo", "react": {"attempt": 2}}, "unknown argument 'react'"),
        ({"skill_name": "echo", "force": 1}, "force must be true or false"),
        ({"input_context": {}}, "skill_name is required"),
        ([1], "must be a JSON object"),
    ],
)
def test_run_kwargs_refusals_are_one_line(kwargs: object, message: str) -> None:
    with pytest.raises(MessageError, match=message) as caught:
        parse_run_kwargs(kwargs)
    assert "\n" not in str(caught.value)


def test_bookkeeping_headers() -> None:
    assert parse_bookkeeping(None) == Bookkeeping()
    assert parse_bookkeeping({ATTEMPT_HEADER: 3, "other": "x"}).attempt == 3
    for bad in ({ATTEMPT_HEADER: 0}, {ATTEMPT_HEADER: True}, {ATTEMPT_HEADER: 11}, {"wre_infra_retries": -1}):
        with pytest.raises(MessageError):
            parse_bookkeeping(bad)
