#!/bin/sh
# Man pages into build/man/ (section 8): mom-checkpoint and mom-restart generated from their argparse
# parsers with argparse-manpage (scripts/build_man.py), mom-checkpoint-run's written by hand
# (packaging/man/mom-checkpoint-run.8). Generated at every build: the parsers keep growing.
#   VENV   the project's virtualenv with argparse-manpage (make venv); default .venv
#   OUT    where the pages go; default build/man
set -eu
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
OUT=${OUT:-build/man}
umask 022

if ! "$VENV/bin/python" -c 'import argparse_manpage' 2>/dev/null; then
    echo "build-man: argparse-manpage is not installed in $VENV (make venv)" >&2
    exit 69
fi
# Reproducible: the pages carry the date of the last commit, not today's.
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
    SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || stat -c %Y mom_checkpoint/__init__.py)
fi
export SOURCE_DATE_EPOCH
version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' mom_checkpoint/__init__.py)
date=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%d)

rm -rf "$OUT"
mkdir -p "$OUT"
"$VENV/bin/python" scripts/build_man.py "$OUT"
sed -e "s/@VERSION@/$version/g" -e "s/@DATE@/$date/g" packaging/man/mom-checkpoint-run.8 >"$OUT/mom-checkpoint-run.8"
echo "build_man: $OUT/mom-checkpoint-run.8"
