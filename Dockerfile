# syntax=docker/dockerfile:1
#
# container-agent image.
#
#   docker build -t container-agent:0.1.0 .
#   docker run --rm -v /var/run/docker.sock:/var/run/docker.sock \
#     -v /var/lib/docker/containers:/host/var/lib/docker/containers:ro \
#     container-agent:0.1.0 run --config /etc/container-agent/config.yaml

########## build stage: install the project and its dependencies into a venv ##########
FROM python:3.11-slim AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH="/opt/venv/bin:${PATH}"

# A C compiler for the optional extension agent/_speedups.c (the logs-API read path's
# per-line loops); build stage only, the runtime image gets the compiled module.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
# The build context is filtered by .dockerignore (no .venv, .git, tests, ...).
COPY . .
RUN pip install --no-cache-dir .

########## runtime stage: only the venv, no build context ##########
FROM python:3.11-slim

LABEL org.opencontainers.image.title="container-agent" \
      org.opencontainers.image.description="Follows Docker containers' logs and events and ships them as structured records" \
      org.opencontainers.image.licenses="Apache-2.0"

# Same base image and path as the build stage, so the venv works as copied.
COPY --from=build /opt/venv /opt/venv

ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# Config is mounted at /etc/container-agent; state (checkpoints, file exporter
# output) lives in /var/lib/container-agent and should be a volume.
RUN mkdir -p /etc/container-agent /var/lib/container-agent

# The image deliberately runs as root (no USER instruction). The agent talks to
# the Docker Engine through /var/run/docker.sock, which is owned by root
# (root:docker, mode 0660), and the GID of the "docker" group differs from host
# to host, so a fixed non-root user cannot be relied on to open it. Note that
# access to the engine socket is root-equivalent on the host anyway. Harden at
# run time instead: drop all capabilities, no-new-privileges, read-only root
# filesystem, default seccomp profile (the Helm chart does all of this).
# On a host where you know the docker group's GID you may run as non-root with
#   docker run --user 65534:<docker-gid> ...

# Metrics / health endpoint (prometheus exporter).
EXPOSE 9811

ENTRYPOINT ["container-agent"]
CMD ["run"]
