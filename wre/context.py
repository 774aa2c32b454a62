"""What every command needs: the settings, the store (with the promotion policy), a console, clean errors."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import lru_cache, wraps
from typing import Any, NoReturn, TypeVar

import celery.exceptions
import kombu.exceptions
import redis.exceptions
import sqlalchemy.exc
from rich.console import Console
from sqlalchemy.engine import make_url

from db.memory import PatternMemory
from scheduler.evaluation import promotion_memory
from worker.settings import get_settings

console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


@lru_cache(maxsize=1)
def store() -> PatternMemory:
    return promotion_memory(get_settings())


def fail(message: str) -> NoReturn:
    """One clear line on stderr and exit status 1: what a user sees instead of a traceback."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    sys.exit(1)


def redacted(url: str) -> str:
    """A URL as it may be shown: without its password."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a URL we cannot parse is shown as a placeholder, never raw
        return "<unparsable URL>"


def user_errors(function: F) -> F:
    """Turn the errors a user can cause (bad input, unreachable services) into one line and exit 1."""

    @wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except (ValueError, OSError) as error:
            fail(str(error))
        except sqlalchemy.exc.OperationalError as error:
            fail(f"cannot reach the database at {redacted(get_settings().database_url)}: {error.orig}")
        except sqlalchemy.exc.ProgrammingError as error:
            fail(f"the database is not ready ({error.orig}); run `wre db upgrade`")
        except (kombu.exceptions.OperationalError, redis.exceptions.ConnectionError) as error:
            fail(f"cannot reach the broker at {redacted(get_settings().broker_url)}: {error}")
        except celery.exceptions.TimeoutError:
            fail("no result in time: is a worker running? (celery -A worker.app worker)")

    return wrapper  # type: ignore[return-value]
