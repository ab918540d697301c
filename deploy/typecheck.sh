#!/bin/bash
# mypy --strict over the installed layout: pyswarm.manager is manager/, and so
# on. mypy cannot follow setuptools' editable finder, so this lays the
# package out as symlinks in a scratch directory and checks that.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT
mkdir "$tree/pyswarm"
for f in "$root"/pyswarm/*.py "$root"/pyswarm/cli; do ln -s "$f" "$tree/pyswarm/"; done
for sub in manager worker dns compose deploy; do ln -s "$root/$sub" "$tree/pyswarm/$sub"; done
cd "$tree"
exec "$root/.venv/bin/mypy" --config-file "$root/pyproject.toml" -p pyswarm "$@"
