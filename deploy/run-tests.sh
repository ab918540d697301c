#!/bin/bash
# The whole suite. pytest's exit 5 ("no tests ran") is a failure here.
set -u
cd "$(dirname "$0")/.."
root=$(pwd)
# run from outside the tree: the top-level dns/ folder must not shadow dnspython
cd /tmp
# the whole suite unless a test path was given
paths=0
for arg in "$@"; do [ -e "$arg" ] && paths=1; done
if [ "$paths" -eq 0 ]; then set -- "$@" "$root/tests"; fi
"$root/.venv/bin/pytest" -c "$root/pyproject.toml" --rootdir "$root" "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
    echo "run-tests: no tests ran; that is a failure" >&2
    exit 1
fi
exit "$rc"
