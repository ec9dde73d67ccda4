#!/usr/bin/env bash
# Quick start: the whole test suite, against a real redis-server and librdkafka's mock
# Kafka cluster (both started by the tests themselves): the Rust workspace, then the
# Python client package (clients/python) in a virtualenv of its own, then the Redis-facing
# tests again on Redis 6.2.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo test --workspace --locked "$@"
# The Python client package's tests, against the binary cargo just built.
scripts/test-python.sh
# The Redis-facing tests again on Redis 6.2.
scripts/test-redis6.sh
