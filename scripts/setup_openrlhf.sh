#!/usr/bin/env bash
# Create (or refresh) a virtual environment with torch (CPU), OpenRLHF and this package, apart from the
# other hosts' (OpenRLHF pins transformers, deepspeed and ray exactly).
#   bash scripts/setup_openrlhf.sh OPENRLHF_VERSION VENV_DIR
#
# OpenRLHF declares flash-attn, whose CUDA extension cannot build on a CPU machine. It is installed here
# from source as its Python part only (FLASH_ATTENTION_SKIP_CUDA_BUILD), and an empty module stands in
# for the missing extension `flash_attn_2_cuda`: OpenRLHF imports flash_attn at module level (its ring-
# attention helpers) but calls it only with packed samples on a GPU. Nothing in the tests runs flash-attn.
# Every other declared dependency (deepspeed, ray, transformers, ...) is the real one, from OpenRLHF's
# own metadata; vLLM (an extra) is not installed: the tests give OpenRLHF a stand-in (tests/openrlhf_cpu).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
version="${1:?usage: setup_openrlhf.sh OPENRLHF_VERSION VENV_DIR}"
venv="${2:?usage: setup_openrlhf.sh OPENRLHF_VERSION VENV_DIR}"
flash_attn='flash-attn==2.8.3'

source "$root/scripts/install.sh"
marker="$venv/.swift-fipo-openrlhf-$version"
if [ ! -f "$marker" ]; then
    install_torch "$venv"
    install_requirements "$venv" --no-deps "openrlhf==$version"
    # OpenRLHF's declared requirements without flash-attn (and without extras), read from its metadata.
    mapfile -t requirements < <("$venv/bin/python" - <<'EOF'
import importlib.metadata
for requirement in importlib.metadata.requires('openrlhf') or []:
    if 'extra ==' in requirement or requirement.replace('_', '-').lower().startswith('flash-attn'):
        continue
    print(requirement)
EOF
)
    install_requirements "$venv" "${requirements[@]}" 'pytest>=8' setuptools ninja psutil
    # pip (not uv): the sdist builds against the venv's torch (no build isolation); its pip cache keeps
    # the built wheel, so a second environment takes seconds.
    FLASH_ATTENTION_SKIP_CUDA_BUILD=TRUE FLASH_ATTENTION_FORCE_BUILD=TRUE \
        "$venv/bin/python" -m pip --disable-pip-version-check -q install --no-build-isolation --no-deps "$flash_attn"
    site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    cat >"$site/flash_attn_2_cuda.py" <<'EOF'
"""Stand-in for flash-attn's CUDA extension (not buildable on a CPU machine; written by swift-fipo's
scripts/setup_openrlhf.sh). Importing flash_attn then works; calling a kernel fails."""
EOF
    touch "$marker"
fi
# Non-editable, as users get it: its .pth activation must run in every fresh interpreter (Ray actors).
install_swift_fipo "$venv"
echo "ready: $venv (openrlhf $version)"
