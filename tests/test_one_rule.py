"""One rule on every host: a dual clip or a participation filter at or inside the PPO clip (``1 + epsilon_high``)
is refused, naming the host's own option and the bound, before a model loads.

One table of bad settings runs through each host's own entry point: ms-swift's argument parsing (the pipeline
start of ``swift rlhf``), TRL's trainer construction (``FIPOGRPOTrainer``), verl's actor config (the validation
its driver runs) and OpenRLHF's command line (``train_ppo_ray``'s parser and checks). The hosts live in
different environments, so this file runs in several suites; each host's rows run where that host is
installed, and every host must refuse every row. The TRL, ms-swift and OpenRLHF rows run in a process of their
own (ms-swift's trainer module, once imported, deletes TRL's ``GRPOTrainer.__init__`` for the whole process).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import REPO, only_where

from swift_fipo.integrations.versions import installed_version


@dataclasses.dataclass(frozen=True)
class Row:
    """Bad settings in the hosts' common terms: the upper PPO clip width, the dual clip, FIPO's filter."""

    name: str
    epsilon_high: float
    dual_clip: float | None = None
    filter_threshold: float | None = None

    @property
    def bound(self) -> str:
        return f'{1 + self.epsilon_high:g}'

    @property
    def field(self) -> str:
        return 'dual_clip' if self.dual_clip is not None else 'filter_threshold'


TABLE = [
    Row('dual clip inside the PPO clip', epsilon_high=0.28, dual_clip=1.1),
    Row('dual clip at the PPO clip', epsilon_high=0.28, dual_clip=1.28),
    Row('filter inside the PPO clip', epsilon_high=0.28, filter_threshold=1.05),
    Row('filter at a wider PPO clip', epsilon_high=0.5, filter_threshold=1.5),
]
IDS = [row.name.replace(' ', '_') for row in TABLE]

# Each host's name for the two settings a row tests, as its refusal must spell them.
OPTION_NAMES = {
    'ms-swift': {'dual_clip': '--delta', 'filter_threshold': '--fipo_filter_threshold'},
    'trl': {'dual_clip': 'GRPOConfig.delta', 'filter_threshold': 'FIPOConfig.filter_threshold'},
    'verl': {'dual_clip': 'actor_rollout_ref.actor.clip_ratio_c',
             'filter_threshold': 'actor_rollout_ref.actor.policy_loss.fipo.filter_threshold'},
    'openrlhf': {'dual_clip': '--actor.dual_clip', 'filter_threshold': '--actor.fipo.filter_threshold'},
}
EPSILON_NAMES = {'ms-swift': 'epsilon_high', 'trl': 'GRPOConfig.epsilon_high',
                 'verl': 'actor_rollout_ref.actor.clip_ratio_high', 'openrlhf': '--actor.eps_clip_low_high[1]'}


def installed(distribution: str) -> bool:
    return installed_version(distribution) is not None


def run_rows(script: str, payload: object, env: dict[str, str] | None = None, cwd: Path | None = None) -> list:
    """Run ``script`` in a fresh interpreter of this environment (the .pth activation on) with the rows as JSON;
    it prints ``RESULTS <json list>``: per row the refusal's message, or None where the row was accepted."""
    environment = {key: value for key, value in os.environ.items() if key != 'SWIFT_FIPO_DISABLE'}
    result = subprocess.run([sys.executable, '-c', textwrap.dedent(script), json.dumps(payload)], capture_output=True,
                            text=True, timeout=600, env={**environment, **(env or {})}, cwd=cwd)
    lines = [line for line in result.stdout.splitlines() if line.startswith('RESULTS ')]
    assert result.returncode == 0 and lines, result.stdout[-3000:] + result.stderr[-5000:]
    return json.loads(lines[-1].removeprefix('RESULTS '))


# --- each host's own entry point, all rows at once -------------------------------------------------------

TRL_SCRIPT = """
    import json, sys, tempfile, warnings
    warnings.simplefilter('ignore')
    from trl import GRPOConfig
    from swift_fipo import FIPOConfig, FIPOGRPOTrainer
    results = []
    for row in json.loads(sys.argv[1]):
        args = GRPOConfig(output_dir=tempfile.mkdtemp(), use_cpu=True, report_to='none', num_iterations=2,
                          epsilon_high=row['epsilon_high'], delta=row['dual_clip'])
        fipo = None if row['filter_threshold'] is None else FIPOConfig(filter_threshold=row['filter_threshold'])
        try:
            FIPOGRPOTrainer(model='/nonexistent/model', reward_funcs=len, args=args, fipo=fipo)
            results.append(None)
        except ValueError as refusal:
            results.append(str(refusal))
        except OSError:  # accepted: the missing model then failed to load
            results.append(None)
    print('RESULTS ' + json.dumps(results))
"""


def trl_refusals() -> list[str | None]:
    return run_rows(TRL_SCRIPT, [dataclasses.asdict(row) for row in TABLE])


def ms_swift_refusals(tiny_run_dir: Path, work: Path) -> list[str | None]:
    from test_integrations_ms_swift_cli import parse_as_swift_rlhf
    argvs = []
    for row in TABLE:
        argv = ['--rlhf_type', 'grpo', '--loss_type', 'fipo', '--num_iterations', '2', '--epsilon_high',
                str(row.epsilon_high)]
        argv += ['--delta', str(row.dual_clip)] if row.dual_clip is not None else \
            ['--fipo_filter_threshold', str(row.filter_threshold)]
        argvs.append(argv)
    return [parsed.get('error') for parsed in parse_as_swift_rlhf(tiny_run_dir, work, argvs)]


def verl_refusals() -> list[str | None]:
    from verl.workers.config import ActorConfig, PolicyLossConfig
    results = []
    for row in TABLE:
        fipo = {} if row.filter_threshold is None else {'filter_threshold': row.filter_threshold}
        try:
            config = ActorConfig(strategy='fsdp', rollout_n=1, ppo_mini_batch_size=4, ppo_micro_batch_size_per_gpu=2,
                                 clip_ratio_low=0.2, clip_ratio_high=row.epsilon_high,
                                 clip_ratio_c=3.0 if row.dual_clip is None else row.dual_clip,
                                 policy_loss=PolicyLossConfig(loss_mode='fipo', fipo=fipo))
            config.validate(n_gpus=1, train_batch_size=8)
            results.append(None)
        except ValueError as refusal:
            results.append(str(refusal))
    return results


OPENRLHF_BASE = ['--algo.advantage.estimator', 'group_norm', '--rollout.n_samples_per_prompt', '4',
                 '--reward.remote_url', 'http://localhost:1', '--actor.num_gpus_per_node', '1',
                 '--rollout.batch_size', '2', '--train.batch_size', '8', '--train.max_epochs', '1',
                 '--actor.policy_loss_type', 'fipo']


def openrlhf_refusals(work: Path) -> list[str | None]:
    cases = []
    for row in TABLE:
        argv = OPENRLHF_BASE + ['--actor.eps_clip_low_high', '0.2', str(row.epsilon_high)]
        argv += ['--actor.dual_clip', str(row.dual_clip)] if row.dual_clip is not None else \
            ['--actor.fipo.filter_threshold', str(row.filter_threshold)]
        cases.append(argv)
    (work / 'cases.json').write_text(json.dumps(cases))
    helpers = REPO / 'tests' / 'openrlhf_cpu'
    environment = {key: value for key, value in os.environ.items() if key != 'SWIFT_FIPO_DISABLE'}
    environment['PYTHONPATH'] = os.pathsep.join(filter(None, [str(helpers), os.environ.get('PYTHONPATH', '')]))
    result = subprocess.run([sys.executable, str(helpers / 'openrlhf_cli.py'), 'activation', '--cases',
                             str(work / 'cases.json'), '--out', str(work / 'out.json')], capture_output=True,
                            text=True, env=environment, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return [found['stderr'] if found['status'] != 0 else None for found in json.loads((work / 'out.json').read_text())]


# --- every host refuses every row ---------------------------------------------------------------------------

@pytest.fixture(scope='module')
def refusals(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list]:
    """Per host, the messages its entry point gave for the table's rows (computed once per host, when asked)."""
    cache: dict[str, list] = {}

    def of(host: str) -> list:
        if host not in cache:
            work = tmp_path_factory.mktemp(host)
            if host == 'trl':
                cache[host] = trl_refusals()
            elif host == 'ms-swift':
                cache[host] = ms_swift_refusals(request.getfixturevalue('tiny_run_dir'), work)
            elif host == 'verl':
                cache[host] = verl_refusals()
            else:
                cache[host] = openrlhf_refusals(work)
        return cache[host]

    return of


def check_refused(host: str, message: str | None, row: Row) -> None:
    assert message is not None, f'{host} accepted {row}'
    option = OPTION_NAMES[host][row.field]
    expected = f'{option} must be > 1 + {EPSILON_NAMES[host]} = {row.bound} (the PPO clip already bounds ratios up to'
    assert expected in message, (host, row, message)


@pytest.mark.parametrize('row', TABLE, ids=IDS)
@only_where(installed('trl'), 'trl is not installed')
def test_trl_refuses_the_row_at_construction(refusals, row: Row) -> None:
    check_refused('trl', refusals('trl')[TABLE.index(row)], row)


@pytest.mark.ms_swift
@pytest.mark.parametrize('row', TABLE, ids=IDS)
@only_where(installed('ms-swift'), 'ms-swift is not installed')
def test_ms_swift_refuses_the_row_while_parsing(refusals, row: Row) -> None:
    check_refused('ms-swift', refusals('ms-swift')[TABLE.index(row)], row)


@pytest.mark.parametrize('row', TABLE, ids=IDS)
@only_where(installed('verl'), 'verl is not installed')
def test_verl_refuses_the_row_in_its_actor_config(refusals, row: Row) -> None:
    check_refused('verl', refusals('verl')[TABLE.index(row)], row)


@pytest.mark.parametrize('row', TABLE, ids=IDS)
@only_where(installed('openrlhf'), 'openrlhf is not installed')
def test_openrlhf_refuses_the_row_on_its_command_line(refusals, row: Row) -> None:
    check_refused('openrlhf', refusals('openrlhf')[TABLE.index(row)], row)


def test_the_table_names_every_host_of_the_table_of_hosts() -> None:
    from swift_fipo.integrations.hosts import HOSTS
    assert set(OPTION_NAMES) == set(EPSILON_NAMES) == {host.name for host in HOSTS}
