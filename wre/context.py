"""What every command needs: the settings, the store (with the promotion policy), a console, clean errors."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import lru_cache, wraps
from typing import Any, NoReturn, TypeVar

import sqlalchemy.exc
from rich.console import Console

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
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    sys.exit(1)


def user_errors(function: F) -> F:
    """Turn the errors a user can cause (bad input, unreachable services) into one line and exit 1."""

    @wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except (ValueError, OSError) as error:
            fail(str(error))
        except sqlalchemy.exc.OperationalError as error:
            fail(f"cannot reach the database at {get_settings().database_url!r}: {error.orig}")
        except sqlalchemy.exc.ProgrammingError as error:
            fail(f"the database is not ready ({error.orig}); run `wre db upgrade`")

    return wrapper  # type: ignore[return-value]
