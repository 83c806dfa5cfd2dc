# The oldest TRL the package declares (trl>=0.26, its newest patch), without ms-swift: the TRL integration,
# the custom-loop example (tests/test_ops_loss.py runs it) and the pure maths.
# TRL 0.26 declares transformers>=4.56.1 with no upper bound, so pip resolves transformers 5, under which
# TRL 0.26 itself fails to import (its optional-package probes read transformers 5's (found, version)
# tuple as true and import requests, weave, ...). Its own era's transformers 4.57 is pinned instead.
set -euo pipefail
cd "$ROOT"
venv="$ROOT/.venv-trl-0.26.2"
bash scripts/setup_trl.sh 0.26.2 "$venv" 'transformers<5'
"$venv/bin/python" -m pytest tests/test_integrations_trl.py tests/test_integrations_trl_precision.py tests/test_one_rule.py tests/test_ops_loss.py tests/test_ops_influence.py tests/test_ops_precision.py \
    tests/test_ops_future_kl.py tests/test_ops_paper.py tests/test_config.py -q -p no:cacheprovider -m 'not ms_swift'
