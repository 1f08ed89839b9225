# Shared by scripts/*: a project virtualenv with berth installed (idempotent, quiet).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
VENV="${BERTH_VENV:-$ROOT/.venv}"

# pip's output reduced to a sign of life on stderr: one updating line on a terminal, a line
# every 20 packages otherwise; the whole output stays in $VENV/install.log.
_berth_progress() {
  local start=$1 n=0 line
  while IFS= read -r line; do
    printf '%s\n' "$line" >>"$VENV/install.log"
    case "$line" in
      Collecting*|Obtaining*)
        n=$((n + 1))
        if [ -t 2 ]; then
          printf '\r  %3d s · %d packages · %s\033[K' "$((SECONDS - start))" "$n" "${line:0:60}" >&2
        elif [ $((n % 20)) -eq 0 ]; then
          printf '  %d s · %d packages\n' "$((SECONDS - start))" "$n" >&2
        fi
        ;;
    esac
  done
  if [ -t 2 ]; then printf '\r\033[K' >&2; fi
}

_berth_pip() {
  local start=$SECONDS
  : >"$VENV/install.log"
  if ! "$VENV/bin/python" -m pip install --disable-pip-version-check "$@" 2>&1 | _berth_progress "$start"; then
    echo "berth: installing failed; the last lines of $VENV/install.log:" >&2
    tail -n 20 "$VENV/install.log" >&2
    return 1
  fi
}

if [ ! -x "$VENV/bin/python" ]; then
  echo "berth: creating $VENV" >&2
  "$PY" -m venv "$VENV"
fi
# Reinstall only when the project's dependency list changed.
STAMP="$VENV/.berth-installed"
if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ]; then
  echo "berth: installing berth and its dependencies into $VENV (the first time takes a minute or two)" >&2
  _berth_start=$SECONDS
  _berth_pip --upgrade pip
  _berth_pip -e "$ROOT[${BERTH_EXTRAS:-dev}]"
  touch "$STAMP"
  echo "berth: installed in $((SECONDS - _berth_start)) s" >&2
fi
export PATH="$VENV/bin:$PATH"
export OTEL_INSTRUMENTATION_A2A_SDK_ENABLED="${OTEL_INSTRUMENTATION_A2A_SDK_ENABLED:-false}"
