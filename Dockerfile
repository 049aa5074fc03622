# ingest: SFTP ingest daemon. See docs/operations.md.
#
#   docker build -t ingest .
#   docker run -d --name ingest -p 2222:2222 -v ingest-data:/data --stop-timeout 45 ingest
#
# State (districts' files, host keys, SQLite) lives in /data; mount a volume there.
# 3.11 is the interpreter the test suite runs on; any version >= 3.11 works.
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# Fixed uid/gid so that volume ownership is predictable across rebuilds and hosts.
RUN groupadd --system --gid 10001 ingest \
 && useradd --system --uid 10001 --gid ingest --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin ingest

# Install the package as the README does (pip install of the project directory), but
# non-editable, then drop the sources and build leftovers.
COPY pyproject.toml README.md /tmp/ingest-src/
COPY ingest /tmp/ingest-src/ingest
RUN pip install /tmp/ingest-src && rm -rf /tmp/ingest-src

COPY config/ingest.toml /etc/ingest/ingest.toml

# /data: everything the daemon writes. /keys: optional separate host key directory (used
# by docker-compose.yml via INGEST_SERVER_HOST_KEY_DIR=/keys). Both owned by the
# non-root user so that fresh named volumes inherit that ownership.
RUN install -d -o ingest -g ingest -m 0750 /data \
 && install -d -o ingest -g ingest -m 0700 /keys

ENV INGEST_CONFIG=/etc/ingest/ingest.toml \
    INGEST_STORAGE_DATA_DIR=/data \
    INGEST_LOGGING_FORMAT=json

WORKDIR /data
USER 10001:10001
VOLUME /data
EXPOSE 2222

# The daemon traps SIGTERM/SIGINT: it stops accepting, lets running uploads finish for up
# to server.shutdown_grace seconds (30 by default), closes the sessions and exits 0. Give
# it longer than that before SIGKILL: `docker stop -t 45` / `docker run --stop-timeout 45`
# / compose `stop_grace_period: 45s` (Docker's default is only 10 s).
STOPSIGNAL SIGTERM

# A real probe of the SFTP port: connects and expects an "SSH-2.0-" banner. Host and port
# follow the configuration (server.port, 0.0.0.0 -> 127.0.0.1).
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
  CMD ["ingest", "healthcheck", "--timeout", "5"]

# Exec form: the `ingest` console script is PID 1 and receives signals directly.
# Other commands run the same way: `docker run --rm -v ingest-data:/data ingest hostkey`.
ENTRYPOINT ["ingest"]
CMD ["serve"]
