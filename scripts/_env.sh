# Shared by scripts/*: a project virtualenv with berth installed (idempotent, quiet).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
VENV="${BERTH_VENV:-$ROOT/.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
# Reinstall only when the project's dependency list changed.
STAMP="$VENV/.berth-installed"
if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ]; then
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$ROOT[${BERTH_EXTRAS:-dev}]"
  touch "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
export OTEL_INSTRUMENTATION_A2A_SDK_ENABLED="${OTEL_INSTRUMENTATION_A2A_SDK_ENABLED:-false}"
