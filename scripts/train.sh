#!/usr/bin/env bash
# Trains an experiment; sets up .venv on first use. Example:
#   ./scripts/train.sh --config=tiny_hybrid --workdir=runs/tiny_hybrid
source "$(dirname "$0")/env.sh"
exec "$VENV/bin/python" -m hybridlm.train "$@"
