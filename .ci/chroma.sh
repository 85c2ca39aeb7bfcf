# ChromaDB for the memory tests: source me, then `chroma_start` (exports LOTUS_CHROMA_URL) and
# `chroma_stop`. Installs chromadb from PyPI into a venv under the CI cache (reused when the
# version matches). Every function returns non-zero on failure, so `set -e` callers stop loudly.
CHROMA_VERSION="${CHROMA_VERSION:-1.5.9}"
CHROMA_CACHE="${CHROMA_CACHE:-${LOTUS_CI_CACHE:-$HOME/.cache/lotus-ci}}"
CHROMA_VENV="$CHROMA_CACHE/chroma-venv-$CHROMA_VERSION"
CHROMA_PORT="${CHROMA_PORT:-8765}"
CHROMA_TIMEOUT="${CHROMA_TIMEOUT:-60}"
export ANONYMIZED_TELEMETRY=False

chroma_install() {
  if [[ "$("$CHROMA_VENV/bin/python" -c 'import chromadb; print(chromadb.__version__)' 2>/dev/null)" == "$CHROMA_VERSION" ]]; then
    return 0
  fi
  rm -rf "$CHROMA_VENV"; mkdir -p "$CHROMA_CACHE"
  if ! python3 -m venv "$CHROMA_VENV" 2>/dev/null; then
    echo "python3-venv is missing; installing it"
    (apt-get install -y -q python3-venv >/dev/null 2>&1 || true)
    rm -rf "$CHROMA_VENV"
    python3 -m venv "$CHROMA_VENV" || { echo "FATAL: python3 -m venv failed (apt-get install python3-venv)" >&2; return 1; }
  fi
  "$CHROMA_VENV/bin/pip" install --quiet --disable-pip-version-check "chromadb==$CHROMA_VERSION" || {
    echo "FATAL: pip could not install chromadb==$CHROMA_VERSION" >&2; return 1; }
}

chroma_start() {
  command -v curl >/dev/null || (apt-get install -y -q curl >/dev/null 2>&1 || true)
  command -v curl >/dev/null || { echo "FATAL: curl is needed to check on chroma" >&2; return 1; }
  chroma_install || return 1
  local url="http://127.0.0.1:$CHROMA_PORT"
  # `chroma run` exits 0 when the port is taken: refuse if anything answers already.
  if curl -s -o /dev/null --max-time 2 "$url/api/v2/heartbeat"; then
    echo "FATAL: something already listens on $url (set CHROMA_PORT)" >&2; return 1
  fi
  CHROMA_DATA="$(mktemp -d "${TMPDIR:-/tmp}/chroma-data.XXXXXX")"
  CHROMA_LOG="$CHROMA_DATA.log"
  "$CHROMA_VENV/bin/chroma" run --host 127.0.0.1 --port "$CHROMA_PORT" --path "$CHROMA_DATA" >"$CHROMA_LOG" 2>&1 &
  CHROMA_PID=$!
  local deadline=$((SECONDS + CHROMA_TIMEOUT))
  until curl -sf -o /dev/null --max-time 2 "$url/api/v2/heartbeat"; do
    if ! kill -0 "$CHROMA_PID" 2>/dev/null; then
      echo "FATAL: chroma exited before becoming ready; log:" >&2; cat "$CHROMA_LOG" >&2; return 1
    fi
    if (( SECONDS >= deadline )); then
      echo "FATAL: chroma not ready after ${CHROMA_TIMEOUT}s; log:" >&2; cat "$CHROMA_LOG" >&2
      kill "$CHROMA_PID" 2>/dev/null || true; return 1
    fi
    sleep 0.5
  done
  export LOTUS_CHROMA_URL="$url" CHROMA_PID CHROMA_DATA
  echo "chroma $CHROMA_VERSION: ok at $url"
}

chroma_stop() {
  if [[ -n "${CHROMA_PID:-}" ]]; then kill "$CHROMA_PID" 2>/dev/null && wait "$CHROMA_PID" 2>/dev/null || true; fi
  if [[ -n "${CHROMA_DATA:-}" ]]; then rm -rf "$CHROMA_DATA" "$CHROMA_DATA.log"; fi
  return 0
}
