#!/usr/bin/env bash
# System packages the tests need beyond Python, installed here so a fresh machine passes:
# - PostgreSQL server binaries, for the tests that run MLflow and Optuna on a real PostgreSQL (as on Kubernetes);
# - Chromium, for the browser tests of the MLflow UI and optuna-dashboard (Playwright drives Debian's build:
#   Playwright's own browser download cannot reach its servers here).
set -euo pipefail
missing=()
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then
  missing+=(postgresql)
fi
if [ ! -x /usr/bin/chromium ]; then
  missing+=(chromium)
fi
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing ${missing[*]} (for the tests)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "warning: ${missing[*]} missing and no root apt-get: the PostgreSQL / browser tests will skip"
fi
