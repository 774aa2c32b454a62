"""What a worker or beat checks before it serves: that its database exists and is migrated.

A wrong database name or a missing migration is not an outage: waiting does not fix it, and a worker that
retried its runs forever against it would look busy while doing nothing. The process exits with one line
instead. A server that does not answer is an outage and is ridden out as before (worker/retries.py).
"""

from __future__ import annotations

import sys
from typing import Any

from worker.settings import get_settings

EXIT_STORE_NOT_READY = 3


def check_store_at_start(**_: Any) -> None:
    """Celery's ``worker_init`` / ``beat_init`` receiver: exit with one line if the store cannot serve."""
    # Imported here: Alembic takes most of a second to import, and every producer imports the app.
    from db.migrate import StoreNotReady, check_ready

    try:
        check_ready(get_settings().database_url)
    except StoreNotReady as error:
        print(f"wre: cannot start: {error}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_STORE_NOT_READY) from None
