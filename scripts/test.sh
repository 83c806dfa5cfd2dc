#!/usr/bin/env bash
# The test suite: every file in scripts/suites/ is one suite (its own virtual environment and pytest
# runs). Suites run in parallel, JOBS at a time (default 2, the cores of the CI machine); each one's
# output goes to .ci-logs/<suite>.log and is printed in full when it fails.
#   bash scripts/test.sh                 every suite
#   bash scripts/test.sh ms-swift-4.6.0  only the named suites (file names without .sh)
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
jobs="${JOBS:-2}"
logs="$root/.ci-logs"
mkdir -p "$logs"

# Headless Debian chromium for the HTML inspector test (tests/test_viz_inspect.py skips without it).
# Only as root on a machine with apt-get (CI's fresh machines); once here, not in parallel suites.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

if [ "$#" -gt 0 ]; then
    suites=("$@")
else
    # The longest suites first, so that the two job slots finish together.
    suites=(ms-swift-4.6.0 ms-swift-4.3.2 ms-swift-3.11.3)
    for file in scripts/suites/*.sh; do
        name="$(basename "$file" .sh)"
        [[ " ${suites[*]} " == *" $name "* ]] || suites+=("$name")
    done
fi

# A skip for any reason but the machine kind (no GPU/CUDA/Transformer Engine/vLLM, root) fails a suite
# (tests/conftest.py), so a broken install cannot hide as a skip.
export SWIFT_FIPO_STRICT_SKIPS=1
start=$(date +%s)

# Lint before any suite (scripts/lint.sh: ruff and mypy): a finding fails the run at once, with what was found.
# A run of named suites skips it (LINT=1 runs it there too).
if [ "$#" -eq 0 ] || [ "${LINT:-0}" = 1 ]; then
    echo "started lint"
    if bash scripts/lint.sh >"$logs/lint.log" 2>&1; then
        echo "lint passed in $(( $(date +%s) - start )) s"
    else
        echo "lint FAILED in $(( $(date +%s) - start )) s:"
        cat "$logs/lint.log"
        exit 1
    fi
fi
declare -A pid_of
run_suite() {
    local name="$1" began
    began=$(date +%s)
    if ROOT="$root" bash "scripts/suites/$name.sh" >"$logs/$name.log" 2>&1; then
        echo "$name passed in $(( $(date +%s) - began )) s"
        echo pass >"$logs/$name.status"
    else
        echo "$name FAILED in $(( $(date +%s) - began )) s (log: .ci-logs/$name.log)"
        echo fail >"$logs/$name.status"
    fi
    echo $(( $(date +%s) - began )) >"$logs/$name.seconds"
}

for name in "${suites[@]}"; do
    [ -f "scripts/suites/$name.sh" ] || { echo "no such suite: $name (scripts/suites/$name.sh)"; exit 2; }
    rm -f "$logs/$name.status" "$logs/$name.seconds"
    while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || true; done
    echo "started $name"
    run_suite "$name" &
    pid_of[$name]=$!
done
wait

failed=()
for name in "${suites[@]}"; do
    [ "$(cat "$logs/$name.status" 2>/dev/null)" = pass ] || failed+=("$name")
done
for name in "${failed[@]}"; do
    echo "===================== $name (failed) ====================="
    cat "$logs/$name.log"
done
suite_seconds=0
for name in "${suites[@]}"; do
    seconds="$(cat "$logs/$name.seconds" 2>/dev/null || echo 0)"
    suite_seconds=$(( suite_seconds + seconds ))
    printf '%-28s %5s s  %s\n' "$name" "$seconds" "$(grep -E '(passed|failed|errors?|skipped)[^=]* in [0-9.]+s' "$logs/$name.log" | tr -d '=' | paste -sd ';' -)"
done
# Every pytest run ends with its skips counted by reason, and the tests written for other environments
# that it left out (tests/conftest.py); gather both here.
for section in 'skips by reason' 'not run here: written for another environment'; do
    echo "$section:"
    for name in "${suites[@]}"; do
        awk -v suite="$name" -v title="$section" 'index($0, " " title " ") && /^=+ / {on = 1; next}
            on && /^ *[0-9]+  / {print "  " suite ": " $0; next} {on = 0}' "$logs/$name.log"
    done
done
echo "all suites: ${#suites[@]}, failed: ${#failed[@]}, suite time ${suite_seconds} s in all, wall time $(( $(date +%s) - start )) s (lint included)"
[ "${#failed[@]}" -eq 0 ]
