FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY workers ./workers
COPY migrations ./migrations
RUN pip install --no-cache-dir -e .
# The code stays root-owned and read-only to the service; it runs as `tuneq`, which owns only what it writes:
# its var dir and the artifact store (a named volume mounted there starts with this ownership).
RUN groupadd --system --gid 10001 tuneq \
    && useradd --system --uid 10001 --gid tuneq --home-dir /app/var --shell /usr/sbin/nologin tuneq \
    && mkdir -p /app/var /data/artifacts \
    && chown -R tuneq:tuneq /app/var /data/artifacts
USER tuneq
ENV TUNEQ_HOST=0.0.0.0 TUNEQ_VAR_DIR=/app/var HOME=/app/var
EXPOSE 8000
CMD ["tuneq", "api"]
