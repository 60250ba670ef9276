# syntax=docker/dockerfile:1
# mailsvc: one image for every process (api, worker, beat, db upgrade); the command picks one.

# -- builder: a virtualenv holding mailsvc and its runtime dependencies (no `dev` extra) ---------
FROM python:3.11-slim AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /build
COPY pyproject.toml ./
COPY src/ ./src/
# A regular (non-editable) install: the package and its runtime deps land in /opt/venv.
RUN pip install --upgrade pip \
    && pip install .

# -- runtime: the venv, the migrations, a non-root user ---------------------------------------------
FROM python:3.11-slim AS runtime

RUN groupadd --system --gid 10001 mailsvc \
    && useradd --system --uid 10001 --gid mailsvc --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin mailsvc

COPY --from=builder /opt/venv /opt/venv

WORKDIR /app
# `mailsvc db upgrade` finds alembic.ini in the current folder or via MAILSVC_ALEMBIC_INI.
COPY alembic.ini ./alembic.ini
COPY alembic/ ./alembic/

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MAILSVC_ENV=prod \
    MAILSVC_ALEMBIC_INI=/app/alembic.ini \
    MAILSVC_DATA_DIR=/tmp/mailsvc

USER mailsvc

EXPOSE 8000

# Only the api serves HTTP; compose turns this check off for workers, beat and migrate.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

ENTRYPOINT ["mailsvc"]
CMD ["api", "--host", "0.0.0.0", "--port", "8000"]
