# Shared by scripts/demo and scripts/test: make .venv and install the package into it.
# Works on a fresh Debian/Ubuntu machine with only Python and apt.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

apt_install() {
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

ensure_venv() {
  local python="${PYTHON:-python3}"
  if [ ! -x .venv/bin/python ]; then
    if ! "$python" -m venv .venv 2>/dev/null; then
      rm -rf .venv
      apt_install python3-venv
      "$python" -m venv .venv
    fi
  fi
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  # A .venv made before the rename holds this checkout as `resumable-stream` (now the name
  # of an unrelated PyPI project): drop it, or two distributions would claim the package.
  if .venv/bin/python -c "import importlib.metadata as m; m.distribution('resumable-stream')" \
      2>/dev/null; then
    .venv/bin/pip uninstall -q -y resumable-stream
  fi
  .venv/bin/pip install -q -e ".[$1]"
}
