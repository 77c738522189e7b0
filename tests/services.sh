#!/usr/bin/env bash
# System packages the tests need beyond Python: PostgreSQL server binaries, for the tests that run
# MLflow and Optuna on a real PostgreSQL (as on Kubernetes). Installed here so a fresh machine passes.
set -euo pipefail
if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing PostgreSQL (server binaries for the tests)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
else
  echo "warning: no PostgreSQL server binaries and no root apt-get: the PostgreSQL tests will skip"
fi
