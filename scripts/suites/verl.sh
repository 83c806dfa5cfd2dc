# Upstream verl, newest release, in its own environment (its transformers pin conflicts with ms-swift's):
# the verl integration, and the activation tests in an environment that has verl but no ms-swift.
# SWIFT_FIPO_REQUIRE_VERL=1: a missing or broken verl fails here instead of skipping.
set -euo pipefail
cd "$ROOT"
version=0.9.1
venv="$ROOT/.venv-verl"
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
if [ ! -f "$venv/.swift-fipo-deps-verl-$version" ]; then
    "${pip[@]}" install -c scripts/constraints-cpu.txt torch==2.13.0
    "${pip[@]}" install -c scripts/constraints-cpu.txt "verl==$version" 'pytest>=8'
    touch "$venv/.swift-fipo-deps-verl-$version"
fi
# Non-editable, as users get it: its .pth activation must run in every fresh interpreter.
"${pip[@]}" install -c scripts/constraints-cpu.txt --no-deps --force-reinstall "$ROOT"
SWIFT_FIPO_REQUIRE_VERL=1 "$venv/bin/python" -m pytest tests/test_integrations_verl.py tests/test_activation.py \
    -q -p no:cacheprovider
