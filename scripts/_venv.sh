# shellcheck shell=bash
# Sourced by scripts/test.sh and scripts/demo.sh (run from the repository root):
# finds interpreters and keeps the virtualenvs under .venv/ up to date.

export PIP_DISABLE_PIP_VERSION_CHECK=1

# find_python 3.12 -> prints the path of a working Python 3.12, or returns 1.
# A name on PATH is not enough: pyenv puts shims for every version on PATH, and a shim
# for a version that is installed but not selected fails when run. So each candidate
# is run once, and must also have venv + ensurepip (Debian splits them out).
# Newest pyenv patch release first; paths with spaces are not supported.
find_python() {
    local version=$1 candidate
    local pyenv_root=${PYENV_ROOT:-$HOME/.pyenv}
    for candidate in \
        "$(command -v "python$version" || true)" \
        $(printf '%s\n' "$pyenv_root"/versions/"$version".*/bin/python | sort -rV) \
        "/usr/bin/python$version" "/usr/local/bin/python$version"
    do
        [[ -n $candidate && -x $candidate ]] || continue
        # Prints the real interpreter behind a shim or symlink.
        if "$candidate" -c "import sys, venv, ensurepip
if sys.version_info[:2] != tuple(map(int, '$version'.split('.'))): sys.exit(1)
print(sys.executable)" 2>/dev/null; then
            return 0
        fi
    done
    return 1
}

# ensure_venv DIR PYTHON -> DIR holds a virtualenv of PYTHON with requirements.txt and
# this repo (editable) installed. The install is skipped when the stamp still matches:
# it hashes the inputs (requirements.txt, pyproject.toml, the interpreter's version and
# the repo's path, since an editable install points at it).
# Every step ends in an explicit `|| return 1`: callers use it in `if`, where set -e is off.
ensure_venv() {
    local dir=$1 python=$2
    local stamp=$dir/.installed
    local want have=""
    want=$({ "$python" -VV && pwd && cat requirements.txt pyproject.toml; } | sha256sum) || return 1
    [[ -f $stamp ]] && have=$(<"$stamp")
    if [[ $want == "$have" ]] && "$dir/bin/python" -c '' 2>/dev/null; then
        return 0
    fi
    rm -f "$stamp"
    # A venv of another interpreter (or a broken one) is rebuilt rather than patched.
    if [[ "$("$dir/bin/python" -VV 2>/dev/null)" != "$("$python" -VV)" ]]; then
        echo "==> creating $dir with $("$python" -V)"
        rm -rf "$dir" && "$python" -m venv "$dir" || return 1
    fi
    echo "==> installing requirements.txt and the eventbus package into $dir"
    "$dir/bin/python" -m pip install --quiet -r requirements.txt -e . || return 1
    printf '%s\n' "$want" >"$stamp"
}
