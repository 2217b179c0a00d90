# The service's one image: the API (default command), `python -m worker` and
# `python -m api.dashboard` all run from it (see docker-compose.yml, docs/deployment.md).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --no-create-home --shell /usr/sbin/nologin app

WORKDIR /app

# Dependencies first, from the exact pins, so that a code change reuses this layer.
COPY constraints.txt ./
RUN pip install --no-cache-dir -r constraints.txt

COPY pyproject.toml README.md ./
COPY api ./api
COPY worker ./worker
COPY shared ./shared
COPY toolkit_jobs ./toolkit_jobs
RUN pip install --no-cache-dir -c constraints.txt .

# gunicorn reads its settings from ./gunicorn.conf.py in the working directory.
COPY gunicorn.conf.py ./

# Numeric, so that a runtime (Kubernetes runAsNonRoot) can tell it is not root.
USER 10001:10001

EXPOSE 8080
# Slim images have no curl: a standard-library probe of http://127.0.0.1:$PORT/health.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-m", "api.healthcheck"]
CMD ["gunicorn", "api:create_app()"]
