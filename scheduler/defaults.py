"""The configured promotion policy, offered to the store below as its default.

db/ knows no statistics and cannot import this floor, so a store built with only its URL
(``PatternMemory(url)``, as the seed builds it) finds this policy through the package's entry point
``wre.promotion_policy: default`` (see pyproject.toml), the same way Celery finds the scheduler's tasks
by name.
"""

from __future__ import annotations

from scheduler.evaluation import PromotionPolicy
from worker.settings import get_settings


def configured_policy() -> PromotionPolicy:
    return PromotionPolicy(get_settings())
