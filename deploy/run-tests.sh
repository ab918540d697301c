#!/bin/bash
# The whole suite. pytest's exit 5 ("no tests ran") is a failure here.
set -u
cd "$(dirname "$0")/.."
root=$(pwd)
# the whole suite unless a test path was given; a path (or path::test) relative
# to the checkout is made absolute, as pytest runs from elsewhere (below)
paths=0
args=()
for arg in "$@"; do
    file=${arg%%::*}
    if [ -e "$file" ]; then
        paths=1
        case "$arg" in /*) ;; *) arg="$root/$arg" ;; esac
    fi
    args+=("$arg")
done
if [ "$paths" -eq 0 ]; then args+=("$root/tests"); fi
set -- "${args[@]}"
# run from outside the tree: the top-level dns/ folder must not shadow dnspython
cd /tmp
"$root/.venv/bin/pytest" -c "$root/pyproject.toml" --rootdir "$root" "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
    echo "run-tests: no tests ran; that is a failure" >&2
    exit 1
fi
exit "$rc"
