#!/usr/bin/env bash
# The Python client's tests (clients/python), in a virtualenv of their own under target/,
# against a redis-server and the daemon binary that `cargo test` built
# (target/debug/metacache, or $METACACHE_BIN).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/python-venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "clients/python[test]"
export METACACHE_BIN="${METACACHE_BIN:-$PWD/target/debug/metacache}"
if [ ! -x "$METACACHE_BIN" ]; then
  cargo build --locked
fi
exec "$venv/bin/python" -m pytest -q clients/python/tests
