#!/usr/bin/env bash
# Quick start: the whole job on an embedded Kafka mock cluster and a redis-server child.
# Extra arguments go to `metacache demo` (e.g. --once, --redis-url URL).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec cargo run --quiet --locked -- demo "$@"
