#!/usr/bin/env bash
# Runs the test suite; sets up .venv (with the test and hf extras: pytest, CPU torch, transformers) on first use. Arguments go to pytest,
# e.g. ./scripts/test.sh -k gdn, or ./scripts/test.sh --runslow for the slow tests too.
HYBRIDLM_EXTRAS=test,hf source "$(dirname "$0")/env.sh"
cd "$ROOT"
exec "$VENV/bin/python" -m pytest -q "$@" tests
