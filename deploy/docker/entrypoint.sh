#!/bin/sh
# The images' entrypoint: runs the program it is given (sluice-controller, sluice-worker or
# sluice-gateway, with its flags). The programs read the internal token from
# SLUICE_INTERNAL_TOKEN; a Docker or Kubernetes secret arrives as a file instead, so
# SLUICE_INTERNAL_TOKEN_FILE may name the file to read it from.
set -eu

if [ -n "${SLUICE_INTERNAL_TOKEN_FILE:-}" ]; then
  if [ -n "${SLUICE_INTERNAL_TOKEN:-}" ]; then
    echo "sluice-entrypoint: set SLUICE_INTERNAL_TOKEN or SLUICE_INTERNAL_TOKEN_FILE, not both" >&2
    exit 2
  fi
  if [ ! -r "$SLUICE_INTERNAL_TOKEN_FILE" ]; then
    echo "sluice-entrypoint: cannot read SLUICE_INTERNAL_TOKEN_FILE $SLUICE_INTERNAL_TOKEN_FILE" >&2
    exit 2
  fi
  # $(...) drops the file's trailing newline, which the programs would refuse in a token.
  SLUICE_INTERNAL_TOKEN=$(cat "$SLUICE_INTERNAL_TOKEN_FILE")
  export SLUICE_INTERNAL_TOKEN
fi
unset SLUICE_INTERNAL_TOKEN_FILE
exec "$@"
