# container-agent image: a build stage that installs the agent (its C extension compiled)
# into a virtual environment, and a runtime stage that holds only that environment.
#
#   docker build -t container-agent .     # python:3.11-slim-bookworm, pip from the index
#   make image                            # no registry, no index: scripts/build-image.sh
#
# Build arguments:
#   BASE        base image of both stages: any Debian-based image with python3 3.11 and
#               its venv module (default python:3.11-slim-bookworm)
#   WHEELHOUSE  a directory in the build context with wheels of the agent (C extension
#               built) and of all its dependencies: pip installs from it alone, no index
#               and no compiler (scripts/build-image.sh makes one; .dockerignore lets
#               build/wheelhouse through)
#   VERSION     the image's version label; the build checks it is the agent's version
#   REVISION, SOURCE   the revision and source labels (empty by default)
#
# Running it (docs/operations.md): the engine socket mounted, a volume on
# /var/lib/container-agent; the root filesystem may be read-only. The default user (10001)
# reads logs through the engine's API and needs the socket's group (--group-add). Reading
# the json-file logs from /var/lib/docker/containers needs uid 0 (the files are root's,
# mode 0640), with every capability dropped all the same (--user 0 --cap-drop ALL).

ARG BASE=python:3.11-slim-bookworm

########## build stage ##########
FROM ${BASE} AS build
# Tells this stage's leftover image apart (scripts/build-image.sh prunes it).
LABEL org.opencontainers.image.title="container-agent-build"
ARG WHEELHOUSE=
ARG VERSION=0.1.0

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python3 -m venv /opt/venv

WORKDIR /src
# The context is small: .dockerignore keeps out .venv, .git, tests, docs, build/ (but
# build/wheelhouse) and so on.
COPY . .

# From the wheelhouse: nothing to compile, nothing fetched. From the index: gcc (and the
# Python headers where the base has none) for agent/_speedups.c, in this stage only.
RUN set -eu; \
    if [ -n "$WHEELHOUSE" ]; then \
        /opt/venv/bin/pip install --no-index --find-links "/src/$WHEELHOUSE" \
            "container-agent==$VERSION"; \
    else \
        packages="gcc libc6-dev"; \
        python3 -c 'import os, sysconfig, sys; \
sys.exit(not os.path.exists(os.path.join(sysconfig.get_path("include"), "Python.h")))' \
            || packages="$packages python3-dev"; \
        apt-get update; \
        apt-get install -y --no-install-recommends $packages; \
        rm -rf /var/lib/apt/lists/*; \
        /opt/venv/bin/pip install /src; \
    fi; \
    /opt/venv/bin/python -I -c 'import sys, agent, agent._speedups; \
v = sys.argv[1]; \
sys.exit(0 if agent.__version__ == v else \
    f"build argument VERSION={v} but the agent is {agent.__version__}: pass --build-arg VERSION")' \
        "$VERSION"; \
    /opt/venv/bin/python -m pip uninstall --quiet --yes pip setuptools; \
    rm -f /opt/venv/bin/activate*

########## runtime stage: the base and the venv, nothing else ##########
FROM ${BASE}
ARG VERSION=0.1.0
ARG REVISION=
ARG SOURCE=

LABEL org.opencontainers.image.title="container-agent" \
      org.opencontainers.image.description="Follows Docker containers' logs, events and stats and ships them as structured records" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}"

# Same base and path as the build stage, so the venv works as copied.
COPY --from=build /opt/venv /opt/venv

ENV PATH="/opt/venv/bin:${PATH}" \
    LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# The default config: engine at /var/run/docker.sock, all state and the records on the
# volume, metrics and /healthz on loopback only (the HEALTHCHECK asks from inside the
# container; to scrape from outside, mount a config with listen: 0.0.0.0:9811 and publish
# the port). Mount your own over /etc/container-agent/config.yaml.
# The volume is 10001:0, mode 0770: writable by the default user and by uid 0 without
# CAP_DAC_OVERRIDE (files mode). A bind-mounted host directory must be writable by the
# user the container runs as.
RUN set -eu; \
    mkdir -p /etc/container-agent /var/lib/container-agent; \
    printf '%s\n' \
        '# container-agent image default (docs/configuration.md has every option)' \
        'engine:' \
        '  host: unix:///var/run/docker.sock' \
        'state_dir: /var/lib/container-agent/state' \
        'exporters:' \
        '  records:' \
        '    type: file' \
        '    path: /var/lib/container-agent/records.ndjson' \
        '  metrics:' \
        '    type: prometheus' \
        '    listen: 127.0.0.1:9811' \
        > /etc/container-agent/config.yaml; \
    echo 'container-agent:x:10001:10001:container-agent:/var/lib/container-agent:/usr/sbin/nologin' >> /etc/passwd; \
    echo 'container-agent:x:10001:' >> /etc/group; \
    chown 10001:0 /var/lib/container-agent; \
    chmod 0770 /var/lib/container-agent; \
    container-agent check-config /etc/container-agent/config.yaml >/dev/null

VOLUME /var/lib/container-agent
WORKDIR /var/lib/container-agent
USER 10001:10001

# The prometheus exporter's port, when a config makes it listen beyond loopback.
EXPOSE 9811

# No curl: the agent's own check, which imports only the standard library (and PyYAML).
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["/opt/venv/bin/python", "-m", "agent.ops.health", "--config", "/etc/container-agent/config.yaml"]

ENTRYPOINT ["container-agent"]
CMD ["run", "--config", "/etc/container-agent/config.yaml"]
