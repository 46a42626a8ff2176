#!/usr/bin/env bash
# Runs the whole test suite, on a fresh machine too:  bash scripts/test.sh [pytest args...]
#
# For each supported pair, Python 3.11 + Django 5.2 and Python 3.12 + Django 6 (requirements.txt
# picks Django by interpreter), it runs the suite on SQLite, then the tests marked db_heavy or
# postgres on PostgreSQL (127.0.0.1:5432 unless EVENTBUS_PG_HOST/PORT/USER say otherwise, as
# in tests/settings.py); then, once, the built wheel installed as users get it
# (tests/install), ruff and mypy. Pytest args go to every pytest run.
# It installs redis-server, chromium and node with apt-get when they are missing, and the
# npm tools of tests/js (tsc, the AsyncAPI parser) with `npm ci` when its lockfile changed.
#
# Off CI, a missing interpreter, package or PostgreSQL is reported and skipped. With CI=true
# each of them is a failure: a skip there would hide a broken machine.
# Tests marked `once` (multi-process scale tests) run only with the last Python of the list.
# EVENTBUS_PYTHONS="3.12" limits the run to some of the pairs (default "3.11 3.12").
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/_venv.sh
source scripts/_venv.sh

export EVENTBUS_CHROMIUM=${EVENTBUS_CHROMIUM:-/usr/bin/chromium}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

results=()                    # one line per step, printed in the summary
status=0                      # becomes 1 when any step fails
passed=0 failed=0 skipped=0   # test counts added up over every pytest run

in_ci() { [[ ${CI:-} == true ]]; }

record() {  # record ok|FAIL|skip|note TEXT
    results+=("$(printf '%-4s  %s' "$1" "$2")")
    if [[ $1 == FAIL ]]; then status=1; fi
}

# missing WHAT CONSEQUENCE: a failure in CI, else one line and carry on without it.
missing() {
    if in_ci; then
        echo "ERROR: $1 (with CI=true that is a failure)" >&2
        record FAIL "$1"
    else
        echo "NOTE: $1: $2"
        record skip "$1: $2"
    fi
}

install_system_packages() {
    local packages=() sudo=()
    command -v redis-server >/dev/null || packages+=(redis-server)
    [[ -x $EVENTBUS_CHROMIUM ]] || packages+=(chromium)
    command -v node >/dev/null || packages+=(nodejs npm)
    if ((${#packages[@]} == 0)); then return 0; fi
    if ((EUID != 0)); then
        if ! command -v sudo >/dev/null; then
            missing "${packages[*]} not installed, and no root or sudo to install them" \
                "the tests that need them skip"
            return 0
        fi
        sudo=(sudo)
    fi
    echo "==> installing ${packages[*]} with apt-get"
    # The lock timeout waits (bounded) for another apt run instead of failing at once.
    local apt=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -qq -o DPkg::Lock::Timeout=300)
    if ! { "${apt[@]}" update && "${apt[@]}" install -y "${packages[@]}"; }; then
        missing "apt-get could not install ${packages[*]}" "the tests that need them skip"
    fi
}

# tests/js's packages (tests/test_export.py runs them), installed with `npm ci` only when
# the stamp differs: a hash of node's version, package.json and package-lock.json.
ensure_node_tools() {
    local dir=tests/js
    local stamp=$dir/node_modules/.installed
    local want have=""
    if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
        missing "node or npm not installed" "the export tests that run tsc and the AsyncAPI parser skip"
        return 0
    fi
    want=$({ node --version && cat "$dir/package.json" "$dir/package-lock.json"; } | sha256sum)
    [[ -f $stamp ]] && have=$(<"$stamp")
    if [[ $want == "$have" ]]; then return 0; fi
    echo "==> npm ci in $dir"
    # No install scripts: these packages need none (one of them only phones home).
    if (cd "$dir" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error); then
        printf '%s\n' "$want" >"$stamp"
    else
        missing "npm ci failed in $dir" "the export tests that run tsc and the AsyncAPI parser skip"
    fi
}

# Prints why PostgreSQL cannot be reached, or nothing when it can. Same server as
# tests/settings.py: EVENTBUS_PG_HOST/PORT/USER, default postgres@127.0.0.1:5432.
postgres_problem() {
    "$1" - <<'EOF'
import os

try:
    import psycopg

    psycopg.connect(
        host=os.environ.get("EVENTBUS_PG_HOST", "127.0.0.1"),
        port=os.environ.get("EVENTBUS_PG_PORT", "5432"),
        user=os.environ.get("EVENTBUS_PG_USER", "postgres"),
        dbname="postgres",
        connect_timeout=5,
    ).close()
except Exception as exc:
    print(" ".join(str(exc).split()) or type(exc).__name__)
EOF
}

# Adds the counts of a pytest JUnit XML report to the totals (none if there is no report).
add_counts() {
    local counts p f s
    counts=$("$1" - "$2" <<'EOF'
import sys
import xml.etree.ElementTree as ET
try:
    suites = ET.parse(sys.argv[1]).getroot().iter("testsuite")
except (OSError, ET.ParseError):
    suites = []
p = f = s = 0
for suite in suites:
    tests, skip = int(suite.get("tests", 0)), int(suite.get("skipped", 0))
    fail = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
    p, f, s = p + tests - skip - fail, f + fail, s + skip
print(p, f, s)
EOF
    ) || counts="0 0 0"
    read -r p f s <<<"$counts"
    passed=$((passed + p)) failed=$((failed + f)) skipped=$((skipped + s))
}

run_pytest() {  # run_pytest sqlite|postgres|demo LABEL PYTHON ONCE [pytest args...]
    local db=$1 label=$2 python=$3 once=$4 rc=0
    shift 4
    # Tests marked `once` (the multi-process scale tests) run in one lane only: ONCE=yes.
    local not_once="" pg_marks="db_heavy or postgres"
    if [[ $once != yes ]]; then not_once="not once" pg_marks="(db_heavy or postgres) and not once"; fi
    local report
    report=$(mktemp "$tmp/report.XXXXXX")
    echo
    echo "==> pytest: $label"
    if [[ $db == postgres ]]; then
        EVENTBUS_TEST_DB=postgres "$python" -m pytest --junitxml="$report" \
            -m "$pg_marks" "$@" || rc=$?
    elif [[ $db == demo ]]; then
        # The demo site's own tests run under the demo's settings (tests/demo).
        "$python" -m pytest --junitxml="$report" --ds=project.settings tests/demo "$@" || rc=$?
    else
        "$python" -m pytest --junitxml="$report" ${not_once:+-m "$not_once"} "$@" || rc=$?
    fi
    add_counts "$python" "$report"
    if ((rc == 0)); then
        record ok "$label"
    elif ((rc == 5)) && [[ $db == postgres ]]; then
        # Exit 5 is "no tests collected": nothing is marked db_heavy or postgres yet.
        record note "$label: no tests marked db_heavy or postgres yet"
    elif ((rc == 5)); then
        record FAIL "$label: pytest collected no tests (exit 5), so something is broken"
    else
        record FAIL "$label: pytest exit code $rc"
    fi
}

install_system_packages
ensure_node_tools

postgres=unknown   # checked once, with the first virtualenv that gets ready
lint_python=""     # the newest virtualenv's python, for ruff and mypy
versions=(${EVENTBUS_PYTHONS:-3.11 3.12})
for version in "${versions[@]}"; do
    venv=.venv/py${version//./}
    once=no   # the `once` tests run with the last Python only
    if [[ $version == "${versions[-1]}" ]]; then once=yes; fi
    if ! python=$(find_python "$version"); then
        missing "Python $version not found" "the Python $version pair is skipped"
        continue
    fi
    if ! ensure_venv "$venv" "$python"; then
        record FAIL "Python $version: installing into $venv failed"
        continue
    fi
    lint_python=$venv/bin/python
    django=$("$venv/bin/python" -c 'import django; print(django.get_version())') || django="?"
    label="Python $version + Django $django"

    run_pytest sqlite "$label, SQLite" "$venv/bin/python" "$once" "$@"
    run_pytest demo "$label, demo site" "$venv/bin/python" no "$@"

    if [[ $postgres == unknown ]]; then
        problem=$(postgres_problem "$venv/bin/python" 2>&1) || true
        if [[ -z $problem ]]; then
            postgres=yes
        else
            postgres=no
            missing "PostgreSQL is unreachable ($problem)" \
                "the PostgreSQL runs are skipped"
        fi
    fi
    if [[ $postgres == yes ]]; then
        run_pytest postgres "$label, PostgreSQL" "$venv/bin/python" "$once" "$@"
    fi
done

# What users install: the wheel with its [redis] extra in a fresh virtualenv, running a
# project made of the README's Install blocks (tests/install/check.py; about 30-60 s).
install_check() {
    local python=$1 output rc=0
    if ! command -v "${EVENTBUS_REDIS_SERVER:-redis-server}" >/dev/null; then
        missing "redis-server not installed" "the install check is skipped"
        return 0
    fi
    echo
    echo "==> the installed wheel: tests/install"
    output=$("$python" -m tests.install.check 2>&1) || rc=$?
    printf '%s\n' "$output"
    output=$(grep -m 1 '^install: ' <<<"$output") || output="install: FAIL: no result line"
    if ((rc == 0)); then record ok "${output#install: PASS: }"; else record FAIL "$output"; fi
}

if [[ -n $lint_python ]]; then
    install_check "$lint_python"
    echo
    echo "==> ruff and mypy ($("$lint_python" -V))"
    if "$lint_python" -m ruff check eventbus project tests bench; then
        record ok "ruff"
    else
        record FAIL "ruff"
    fi
    if "$lint_python" -m mypy; then  # files and strictness come from pyproject.toml
        record ok "mypy"
    else
        record FAIL "mypy"
    fi
else
    record FAIL "no Python 3.11 or 3.12 virtualenv, so nothing ran"
fi

echo
if ((status == 0)); then echo "==> Summary: OK"; else echo "==> Summary: FAILED"; fi
printf '%s\n' "${results[@]}"
# Last, a plain closing line that CI can read, with the counts of every pytest run above.
echo "Tests: $passed passed, $failed failed, $skipped skipped"
exit "$status"
