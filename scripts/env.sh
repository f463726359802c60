# Sourced by the other scripts: makes .venv (Python >= 3.11) on first use and installs hybridlm into it,
# again whenever setup.py changes. Extras to install come in $HYBRIDLM_EXTRAS (e.g. "test").
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11), f"hybridlm needs Python >= 3.11, found {sys.version.split()[0]}; set PYTHON=/path/to/python3.11"'
  echo "creating $VENV" >&2
  "$PYTHON" -m venv "$VENV"
fi
spec=".${HYBRIDLM_EXTRAS:+[$HYBRIDLM_EXTRAS]}"
stamp="$VENV/.installed-$(cat "$ROOT/setup.py" | sha1sum | cut -c1-12)-${HYBRIDLM_EXTRAS:-none}"
if [ ! -f "$stamp" ]; then
  echo "installing hybridlm${HYBRIDLM_EXTRAS:+[$HYBRIDLM_EXTRAS]} into $VENV (first use, or setup.py changed)" >&2
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  if [[ ",${HYBRIDLM_EXTRAS:-}," == *",hf,"* ]]; then  # the CPU build of torch, not the multi-GB CUDA one
    "$VENV/bin/python" -m pip install --quiet "torch==2.13.0+cpu" \
      || "$VENV/bin/python" -m pip install --quiet torch --index-url https://download.pytorch.org/whl/cpu
  fi
  (cd "$ROOT" && "$VENV/bin/python" -m pip install --quiet -e "$spec")
  touch "$stamp"
fi
