# The newest TRL release, with the transformers it resolves to, without ms-swift: every test that does not
# need ms-swift (the TRL integration, the custom-loop example, the maths, the CLI and viz where their
# optional packages are present); the ms-swift ones are deselected by their marker.
set -euo pipefail
cd "$ROOT"
venv="$ROOT/.venv-trl-1.16.0"
# matplotlib, pillow, hypothesis: the plots, the inspector and the fuzz tests run here too.
bash scripts/setup_trl.sh 1.16.0 "$venv" matplotlib pillow 'hypothesis>=6'
"$venv/bin/python" -m pytest tests -q -p no:cacheprovider -m 'not ms_swift'
