#!/usr/bin/env bash
# Quick start: the whole test suite, against a real redis-server and librdkafka's mock
# Kafka cluster (both started by the tests themselves).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec cargo test --workspace --locked "$@"
