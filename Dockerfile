# One image for every wre service: worker, beat, flower, exporter and the one-shot migration.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# The packages pyproject.toml installs, and nothing else (no tests, no virtualenv, no local database).
COPY pyproject.toml README.md ./
COPY db ./db
COPY worker ./worker
COPY scheduler ./scheduler
COPY wre ./wre
COPY skills ./skills

RUN pip install . \
    && useradd --create-home --uid 10001 wre

# Not root: a skill's python entrypoint runs inside the worker.
USER wre

CMD ["wre", "--help"]
