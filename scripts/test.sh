#!/usr/bin/env bash
# `npm test`: runs every jest project serially (the server-backed tiers share one Postgres and one Temporal
# dev server) and ends with one summary line, `N passed, N failed`, where suites that could not run count as
# failures. Extra arguments go to jest, e.g. `npm test -- --selectProjects integration`.
set -uo pipefail

cd "$(dirname "$0")/.."

# A file of this run's own: two runs in one checkout must not read each other's results.
results="$(mktemp "${TMPDIR:-/tmp}/cyxwiz-jest-XXXXXX")"
trap 'rm -f "$results"' EXIT
rm -f "$results"

if bash scripts/ensure-temporal.sh 2>&1; then
  # stderr joins stdout so that the summary below is the last line whichever stream a reader follows.
  npx jest --runInBand --json --outputFile="$results" "$@" 2>&1
  status=$?
else
  status=1
fi

node - "$results" <<'JS'
const fs = require('fs');
let passed = 0;
let failed = 1;
try {
  const r = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
  // A suite that fails before running any test (syntax/type error, failing beforeAll import) has no test results.
  const brokenSuites = (r.testResults || []).filter(
    (s) => s.status === 'failed' && (s.assertionResults || []).every((a) => a.status !== 'failed'),
  ).length;
  passed = r.numPassedTests;
  failed = r.numFailedTests + Math.max(brokenSuites, r.numRuntimeErrorTestSuites || 0);
} catch {
  // jest crashed before writing its results
}
console.log(`${passed} passed, ${failed} failed`);
JS

if [ "$status" -eq 0 ] && [ ! -s "$results" ]; then status=1; fi
exit "$status"
