#!/usr/bin/env bash
# Runs every fuzz target of the module (each func FuzzXxx in a _test.go
# file, found by grep, so that new ones are run without being listed here)
# for FUZZTIME each: scripts/test.sh runs it after the unit tests.
#
#   scripts/fuzz.sh                   # every target, 10s each
#   FUZZTIME=2m scripts/fuzz.sh       # longer
#   scripts/fuzz.sh ./schedule        # the targets of some packages only
#
# What a target finds is written under its package's testdata/fuzz/NAME/
# and fails the run; keep that file (go test runs it from then on) and fix
# the code. For hours on one target, see the README's test section.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
FUZZTIME=${FUZZTIME:-10s}

dirs=("$@")
if [ ${#dirs[@]} -eq 0 ]; then
  dirs=(.)
fi
mapfile -t files < <(grep -rlE --include='*_test.go' --exclude-dir=testdata --exclude-dir=vendor '^func Fuzz[A-Za-z0-9_]*\(' "${dirs[@]}" | sort)
if [ ${#files[@]} -eq 0 ]; then
  echo "fuzz: no fuzz targets found" >&2
  exit 1
fi

# fuzz_one PKG TARGET: one target for FUZZTIME. Go before 1.27 can end a
# run with a bare "context deadline exceeded" when -fuzztime runs out while
# a worker is mid-input (golang/go#75804: the coordinator compares the
# worker's error with its child context before the cancel has reached it).
# That run found nothing: no input is written and the message is the whole
# failure. Such a run is run once more; anything else fails at once, and a
# second bare deadline fails too, so a target that really hangs still shows.
fuzz_one() {
  local pkg=$1 target=$2 log corpus before after try
  log=$(mktemp)
  corpus="$pkg/testdata/fuzz/$target"
  for try in 1 2; do
    before=$(ls "$corpus" 2>/dev/null | sort || true)
    # -run '^$': the package's other tests ran already, with the unit tests.
    if go test "$pkg" -run '^$' -fuzz "^${target}\$" -fuzztime "$FUZZTIME" 2>&1 | tee "$log"; then
      rm -f "$log"
      return 0
    fi
    after=$(ls "$corpus" 2>/dev/null | sort || true)
    if [ "$try" = 1 ] && [ "$before" = "$after" ] &&
      ! grep -q 'Failing input written' "$log" &&
      [ "$(grep -c -- '^--- FAIL' "$log")" = 1 ] &&
      grep -A1 -- '^--- FAIL' "$log" | tail -n1 | grep -qx '[[:space:]]*context deadline exceeded'; then
      echo "fuzz: $pkg $target ended on Go's fuzz-deadline race (golang/go#75804), no input found; once more" >&2
      continue
    fi
    rm -f "$log"
    return 1
  done
}

failed=()
n=0
for f in "${files[@]}"; do
  pkg=./$(dirname "${f#./}")
  for target in $(grep -oE '^func Fuzz[A-Za-z0-9_]*\(' "$f" | sed -E 's/^func (Fuzz[A-Za-z0-9_]*)\(/\1/'); do
    n=$((n + 1))
    echo "fuzz: $pkg $target for $FUZZTIME" >&2
    if ! fuzz_one "$pkg" "$target"; then
      failed+=("$pkg $target")
    fi
  done
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: ${#failed[@]} of $n targets failed: ${failed[*]}" >&2
  echo "fuzz: the input that failed is under that package's testdata/fuzz/ (named in its output above); keep it with the fix" >&2
  exit 1
fi
echo "fuzz: $n targets ran $FUZZTIME each, nothing found" >&2
