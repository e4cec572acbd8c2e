#!/usr/bin/env bash
# Builds the container-agent image where no image registry and no package index can be
# reached from inside a build (`make image`; the image test calls it too):
#
#   1. the base image container-agent-base:bookworm, made from Debian's packages
#      (mmdebstrap --variant=minbase: python3 and python3-venv) and `docker import`ed;
#      skipped when the engine has it already;
#   2. a wheelhouse made on this host: the project's wheel, C extension included (this
#      host's Python must be 3.11, bookworm's ABI: cp311), and binary wheels of its
#      dependencies (kept in build/wheel-cache for the next build);
#   3. `docker build --network none` of the Dockerfile with BASE=container-agent-base:bookworm
#      and WHEELHOUSE=build/wheelhouse, a context of its own holding the sources the image
#      needs and the wheelhouse: pip installs from the wheelhouse only.
#
#   scripts/build-image.sh [TAG]     # default container-agent:dev
#
# The engine is the one DOCKER_HOST names; when it is unset, the private test engine
# (scripts/test-engine.sh, started if needed). With a registry at hand, build the ordinary
# way instead: `docker build -t container-agent .` (python:3.11-slim-bookworm, pip from the
# index, gcc in the build stage).
#
# Environment: CA_IMAGE_BASE (a base image the engine has; then step 1 is skipped unless
# it is container-agent-base:bookworm and missing), PY (a Python 3.11 with pip; default
# .venv/bin/python, else python3), DEBIAN_MIRROR (default http://deb.debian.org/debian).
set -euo pipefail

cd "$(dirname "$0")/.."
tag=${1:-container-agent:dev}
base=${CA_IMAGE_BASE:-container-agent-base:bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if [ -z "${DOCKER_HOST:-}" ]; then
  DOCKER_HOST=$(scripts/test-engine.sh start | tail -n 1 | sed 's/^DOCKER_HOST=//')
fi
export DOCKER_HOST
say() { echo "build-image: $*" >&2; }
now() { date +%s; }

# -- 1. the base image ---------------------------------------------------------------------
t0=$(now)
if docker image inspect "$base" >/dev/null 2>&1; then
  say "base $base: on the engine already"
elif [ "$base" != container-agent-base:bookworm ]; then
  say "base $base: not on the engine at $DOCKER_HOST (pull or load it first)"
  exit 1
else
  if ! command -v mmdebstrap >/dev/null; then
    say "installing mmdebstrap"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq mmdebstrap >/dev/null
  fi
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  say "base $base: mmdebstrap bookworm (python3, python3-venv) from $mirror"
  # Merged /usr set up by mmdebstrap's hook, as Debian's own images do, rather than by the
  # usrmerge package, which would bring perl (50 MB); no manuals, documentation (but the
  # copyright files) or translations.
  mmdebstrap --quiet --variant=minbase --include=python3,python3-venv \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    bookworm "$work/base.tar" "$mirror" </dev/null
  docker import -c 'ENV LANG=C.UTF-8' -c 'CMD ["python3"]' \
    -m "Debian bookworm minbase with python3 and python3-venv (mmdebstrap)" \
    "$work/base.tar" "$base" >/dev/null
  rm -rf "$work"
  trap - EXIT
  say "base $base: built in $(($(now) - t0)) s"
fi

# -- 2. the wheelhouse ---------------------------------------------------------------------
# Everything happens in a directory of this run's own (builds in one tree at once, e.g. two
# `make test`, don't meet): a copy of the sources the image needs (the build context, with
# the wheelhouse added) and a second copy that pip builds the project's wheel from.
t1=$(now)
"$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || {
  say "$PY is not Python 3.11, the image's (cp311): set PY to a Python 3.11"
  exit 1
}
work=$(mktemp -d /tmp/container-agent-image.XXXXXX)
fail() {
  tail -n 40 "$1" >&2
  say "$2 (whole output: $1; the directory $work is kept)"
  exit 1
}
context=$work/context
wheelhouse=build/wheelhouse # in the context
mkdir -p "$context/$wheelhouse"
tar -c --exclude=__pycache__ --exclude='*.so' --exclude='*.pyc' \
  Dockerfile .dockerignore pyproject.toml setup.py README.md agent exporters |
  tar -x -C "$context"
cp -a "$context" "$work/src"
# From the wheels kept in build/wheel-cache first, without the index (seconds); when that
# fails (a dependency added or changed, or a first build), the index fills the cache. The
# cache never looks for newer releases: `rm -rf build/wheel-cache` does.
cache=$PWD/build/wheel-cache
log=$work/wheelhouse.log
mkdir -p "$cache"
pip_wheel() {
  "$PY" -m pip wheel --disable-pip-version-check "$@" "$work/src" >>"$log" 2>&1
}
if ! pip_wheel --no-index --find-links "$cache" --wheel-dir "$context/$wheelhouse"; then
  say "wheelhouse: from the package index into build/wheel-cache"
  requires=$("$PY" -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"])')
  # The build backend too, for the isolated build of the project without the index.
  # shellcheck disable=SC2086
  { "$PY" -m pip download --disable-pip-version-check --only-binary=:all: \
      --dest "$cache" $requires wheel >>"$log" 2>&1 &&
    pip_wheel --wheel-dir "$cache" &&
    rm -f "$cache"/container_agent-*.whl &&
    rm -rf "${context:?}/$wheelhouse" && mkdir -p "$context/$wheelhouse" &&
    pip_wheel --no-index --find-links "$cache" --wheel-dir "$context/$wheelhouse"; } ||
    fail "$log" "pip failed"
fi
version=$("$PY" -c 'import re; print(re.search(r"__version__ = \"(.+)\"", open("agent/__init__.py").read())[1])')
wheel=$(ls "$context/$wheelhouse"/container_agent-"$version"-*.whl)
if ! "$PY" -c 'import sys, zipfile
sys.exit(not [n for n in zipfile.ZipFile(sys.argv[1]).namelist() if n.startswith("agent/_speedups.")])' "$wheel"; then
  fail "$log" "$(basename "$wheel") has no C extension (agent/_speedups.c did not compile: is gcc there?)"
fi
say "wheelhouse: $(ls "$context/$wheelhouse" | wc -l) wheels," \
  "$(du -sh "$context/$wheelhouse" | cut -f1), in $(($(now) - t1)) s"

# -- 3. the image --------------------------------------------------------------------------
t2=$(now)
revision=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain -- Dockerfile pyproject.toml setup.py agent exporters 2>/dev/null)" ]; then
  revision=$revision-dirty
fi
# The engine may have no BuildKit (the test engine's dockerd is 20.10 and the client may
# have no buildx): the classic builder, which builds multi-stage Dockerfiles too. RUN steps
# get no network: everything comes from the base and the wheelhouse.
log=$work/image-build.log
DOCKER_BUILDKIT=0 docker build --network none --force-rm \
  --build-arg BASE="$base" \
  --build-arg WHEELHOUSE="$wheelhouse" \
  --build-arg VERSION="$version" \
  --build-arg REVISION="$revision" \
  -t "$tag" "$context" >"$log" 2>&1 || fail "$log" "docker build failed"
rm -rf "$work"
# What earlier builds left untagged, of these images only: the build stage, and the image
# this tag named before.
for title in container-agent-build container-agent; do
  docker image prune --force --filter "label=org.opencontainers.image.title=$title" >/dev/null
done
size=$(docker image inspect -f '{{.Size}}' "$tag")
say "image $tag: $((size / 1000000)) MB, built in $(($(now) - t2)) s"
echo "$tag"
