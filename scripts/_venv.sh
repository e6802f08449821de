# Sourced by scripts/test, scripts/demo and the benchmarks: create or reuse .venv and install the project
# (with its test extras) when setup.py changed since the last install. Needs only python3 with venv.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${GATEKEEPER_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
if [ ! -x "$PY" ]; then
  python3 -m venv "$VENV" || { echo "scripts: python3 -m venv failed (Debian: apt-get install python3-venv)" >&2; exit 1; }
fi
stamp="$VENV/.gatekeeper-installed"
want="$(sha256sum "$ROOT/setup.py" | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  "$PY" -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
  "$PY" -m pip install -q --disable-pip-version-check -e "$ROOT[test]"
  echo "$want" > "$stamp"
fi
