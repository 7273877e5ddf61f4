# pgfailover: `pgfailover serve` (the arbiter) by default, any `pgfailover`
# command as arguments. Debian's Python 3.11 in a virtual environment,
# non-root, dependencies from the package metadata. The base defaults to
# debian:bookworm-slim (BASE_IMAGE: any Debian 12 image, such as the one the
# tests build from Debian's packages with debootstrap).
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}

LABEL org.pgfailover.lab="image"
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/pgfailover/bin:$PATH
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/pgfailover

# Wheels in docker/wheels are used first (`pip wheel --wheel-dir docker/wheels
# '.[binary,cli]'` on a machine that reaches PyPI); PIP_INDEX_OPTIONS=--no-index
# builds from them alone, offline.
ARG PIP_INDEX_OPTIONS=
WORKDIR /app
COPY docker/wheels /wheels
COPY pyproject.toml README.md ./
COPY pgfailover ./pgfailover
RUN pip install $PIP_INDEX_OPTIONS --find-links /wheels ".[binary,cli]" \
    && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin pgfailover
COPY docker/demo_app.py ./demo_app.py

USER 10001
EXPOSE 8008
ENTRYPOINT ["pgfailover"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8008"]
