# pgfailover: `pgfailover serve` (the arbiter) by default, any `pgfailover`
# command as arguments. Slim, non-root, dependencies from the package metadata.
FROM python:3.12.6-slim-bookworm

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY pgfailover ./pgfailover
RUN pip install ".[binary,cli]" \
    && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin pgfailover
COPY docker/demo_app.py ./demo_app.py

USER 10001
EXPOSE 8008
ENTRYPOINT ["pgfailover"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8008"]
