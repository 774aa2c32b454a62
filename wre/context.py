"""What every command needs: the settings, the store (with the promotion policy), clean errors and output.

Output: tables never cut an id or a name (piped, they are as wide as their content; in a terminal, cells
fold), ``--json`` prints plain JSON on stdout, records show as panels. Errors: whatever a user can cause
is one line on stderr and a non-zero exit, never a traceback. Only Typer and Rich are imported here: the
store, Celery and the settings load when a command runs, so `wre --help` and `wre --version` answer at once.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from functools import lru_cache, wraps
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import typer
from rich.console import Console, RenderableType
from rich.measure import Measurement
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from db.memory import PatternMemory

console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])

# Exit statuses: 1 for a user's mistake or an unreachable service, 2 for a command line that does not parse.
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_RUN_FAILED = 3
# Piped output is as wide as its content, up to this many columns.
WIDEST = 100_000


@lru_cache(maxsize=1)
def store() -> PatternMemory:
    from scheduler.evaluation import promotion_memory
    from worker.settings import get_settings
    from worker.skills import check_variation

    return promotion_memory(get_settings(), variation_check=check_variation)


def known_skill(memory: PatternMemory, name: str) -> None:
    if memory.get_skill(name) is None:
        raise ValueError(f"unknown skill {name!r}; `wre skill list` shows the registered ones")


def one_line(message: str) -> str:
    return " ".join(part.strip() for part in str(message).splitlines() if part.strip())


def fail(message: str, status: int = EXIT_ERROR) -> NoReturn:
    """One clear line on stderr and a non-zero exit: what a user sees instead of a traceback."""
    err_console.print(Text.assemble(("error:", "bold red"), " ", one_line(message)), soft_wrap=True)
    sys.exit(status)


def redacted(url: str) -> str:
    """A URL as it may be shown: without its password."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a URL we cannot parse is shown as a placeholder, never raw
        return "<unparsable URL>"


def user_errors(function: F) -> F:
    """Turn every error a command can meet into one line on stderr and exit 1 (never a traceback).

    The settings are checked first, whether the command reads them or not: a bad one is refused at start
    (one line naming the variable), not by the first command that happens to need it.
    """

    @wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import alembic.util.exc
        import celery.exceptions
        import kombu.exceptions
        import redis.exceptions
        import sqlalchemy.exc

        from worker.settings import get_settings

        try:
            get_settings()
            return function(*args, **kwargs)
        except (SystemExit, KeyboardInterrupt, typer.Exit, typer.Abort):
            raise
        except (ValueError, OSError, alembic.util.exc.CommandError) as error:
            fail(str(error))
        except sqlalchemy.exc.OperationalError as error:
            if "no such table" in str(error.orig):  # SQLite's word for a database never migrated
                fail(f"the database is not ready ({error.orig}); run `wre db upgrade`")
            fail(f"cannot reach the database at {redacted(get_settings().database_url)}: {error.orig}")
        except sqlalchemy.exc.ProgrammingError as error:
            fail(f"the database is not ready ({error.orig}); run `wre db upgrade`")
        except sqlalchemy.exc.ArgumentError as error:
            fail(f"WRE_DATABASE_URL cannot be used: {error}")
        except (kombu.exceptions.OperationalError, redis.exceptions.ConnectionError) as error:
            fail(f"cannot reach the broker at {redacted(get_settings().broker_url)}: {error}")
        except celery.exceptions.TimeoutError:
            fail("no result in time: is a worker running? (celery -A worker.app worker)")
        except Exception as error:  # noqa: BLE001 - the last line of defence: still one line, never a traceback
            fail(f"unexpected {type(error).__name__}: {error}")

    return wrapper  # type: ignore[return-value]


def command(app: typer.Typer, name: str) -> Callable[[F], F]:
    """Register ``name`` on ``app`` with its errors as one line (:func:`user_errors`)."""
    return lambda function: app.command(name)(user_errors(function))  # type: ignore[return-value]


def print_json(data: Any) -> None:
    """Plain JSON on stdout (no colour, no wrapping): what `--json` prints, for jq and scripts."""
    sys.stdout.write(json.dumps(data, indent=2, default=str, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def table(*headers: str, title: str | None = None) -> Table:
    """A table whose cells fold rather than cut: an id or a name is never shown as ``classify_i…``."""
    made = Table(title=title)
    for header in headers:
        made.add_column(header, overflow="fold")
    return made


def show(renderable: RenderableType) -> None:
    """Print to stdout; piped or redirected, as wide as the content needs, so `| grep NAME` finds it."""
    if console.is_terminal:
        console.print(renderable)
        return
    needed = Measurement.get(console, console.options.update_width(WIDEST), renderable).maximum
    # A console's print never goes wider than the console, so a wide one is made for this output.
    Console(file=console.file, width=max(console.width, needed), no_color=console.no_color).print(renderable)


def number(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def percent(value: float | None, sign: str = "") -> str:
    return "-" if value is None else f"{value:{sign}.0%}"


def _cell(value: Any) -> RenderableType:
    if value is None:
        return Text("-")
    if isinstance(value, float):
        return Text(f"{value:.4g}")
    if isinstance(value, Mapping):
        return fields_grid(value)
    if isinstance(value, list | tuple):
        return Text(", ".join(str(item) for item in value) or "-")
    return Text(str(value))


def fields_grid(fields: Mapping[str, Any]) -> Table:
    """Every field of a record as ``name  value`` rows (nested records indent): new fields show up too."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    for name, value in fields.items():
        grid.add_row(str(name).replace("_", " "), _cell(value))
    return grid


def record_panel(title: str, fields: Mapping[str, Any], subtitle: str | None = None) -> Panel:
    """A record (a test, a run's result) as a readable panel of all its fields."""
    return Panel(fields_grid(fields), title=title, subtitle=subtitle, expand=False, title_align="left")
