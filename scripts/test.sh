#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, vet, every package's
# tests (unit, CLI end-to-end, crash tests with kill -9, real sshd).
set -euo pipefail
cd "$(dirname "$0")/.."
unformatted=$(gofmt -l cmd internal bench 2>/dev/null || true)
if [ -n "$unformatted" ]; then
  echo "gofmt would change:"; echo "$unformatted"; exit 1
fi
go vet ./...
go test -count=1 -timeout 20m "$@" ./...
