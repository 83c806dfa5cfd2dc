# Sourced by the setup scripts: fast, shared installs into a virtual environment.
#   install_torch VENV            the local CPU build of torch 2.13.0, through pip (pip's configuration
#                                 knows where the wheel lies; uv would fetch a multi-GB CUDA build)
#   install_requirements VENV REQUIREMENT...
#                                 everything else, through uv (one resolver run, a shared cache, links
#                                 instead of copies: seconds where pip takes minutes), with torch pinned by
#                                 scripts/constraints-cpu.txt so the CPU build stays
#   install_swift_fipo VENV       this package, non-editable and without dependencies, as users get it
#   prepare_venv VENV REQUIREMENT...
#                                 install_torch, then install_requirements, once per VENV and set of
#                                 REQUIREMENTs (a marker file in VENV names them: a changed set installs again)
# uv itself lives in .venv-uv at the repository root, made once (under a lock: suites run in parallel).
install_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
install_constraints="$install_root/scripts/constraints-cpu.txt"

_uv() {
    local tools="$install_root/.venv-uv"
    (
        flock 9
        if [ ! -x "$tools/bin/uv" ]; then
            python3 -m venv "$tools"
            "$tools/bin/python" -m pip --disable-pip-version-check -q install 'uv>=0.9'
        fi
    ) 9>"$install_root/.venv-uv.lock"
    "$tools/bin/uv" "$@"
}

install_torch() {
    [ -x "$1/bin/python" ] || python3 -m venv "$1"
    "$1/bin/python" -m pip --disable-pip-version-check -q install -c "$install_constraints" torch==2.13.0
}

install_requirements() {
    local venv="$1"
    shift
    _uv pip install --quiet --python "$venv/bin/python" -c "$install_constraints" "$@"
}

install_swift_fipo() {
    # --reinstall: always the current source, never a stale build; dependencies untouched.
    _uv pip install --quiet --python "$1/bin/python" --no-deps --reinstall "$install_root"
}

prepare_venv() {
    local venv="$1"
    shift
    local marker
    marker="$venv/.swift-fipo-deps$(printf -- '-%s' "$@" | tr -c 'A-Za-z0-9.-' '_')"
    if [ ! -f "$marker" ]; then
        install_torch "$venv"
        install_requirements "$venv" "$@"
        touch "$marker"
    fi
}
