"""Storage floor: SQLAlchemy 2 models, engine/session, Alembic migrations and the PatternMemory gateway.

Knows nothing of Celery, agents or statistics.
"""
