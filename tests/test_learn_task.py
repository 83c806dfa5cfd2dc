"""The learning example's pieces (examples/learn/): the task generator, its verifier and reward, the tokenizer,
the evaluation's metrics, the study's statistics. Cheap: no training here; the study itself is the learning claim.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import math
import random
import sys
from pathlib import Path

import pytest
from conftest import REPO, ms_swift_version, only_where

LEARN = REPO / 'examples' / 'learn'
sys.path.insert(0, str(LEARN))

import build_model  # noqa: E402
import evaluate  # noqa: E402
import reward as reward_plugin  # noqa: E402
import study  # noqa: E402
import task  # noqa: E402
import token_weights  # noqa: E402

# The example's tokenizer is built in the form transformers 5.x reloads (Qwen2Tokenizer from vocab + merges).
TRANSFORMERS_5 = int(importlib.metadata.version('transformers').split('.')[0]) >= 5
NEEDS_TRANSFORMERS_5 = only_where(TRANSFORMERS_5, 'transformers 5.x (the example builds its tokenizer for it)')


def _reference_value(expression: str) -> int:
    # Independent of task.py: evaluate with Python's integers, reducing mod 10 after each operator.
    value = int(expression[0])
    for index in range(1, len(expression), 2):
        value = eval(f'{value}{expression[index]}{expression[index + 1]}') % 10  # noqa: S307 - digits and +-* only
    return value


def test_generator_is_deterministic_by_seed():
    first = task.make_splits(seed=3, sft=200, rl=50, heldout=40)
    again = task.make_splits(seed=3, sft=200, rl=50, heldout=40)
    other = task.make_splits(seed=4, sft=200, rl=50, heldout=40)
    assert first == again
    assert first.heldout != other.heldout


def test_splits_are_disjoint_and_heldout_does_not_depend_on_other_sizes():
    splits = task.make_splits(seed=0, sft=3000, rl=800, heldout=500)
    sets = [set(splits.sft), set(splits.rl), set(splits.heldout)]
    assert [len(s) for s in sets] == [3000, 800, 500]  # distinct within each set
    assert not sets[0] & sets[1] and not sets[0] & sets[2] and not sets[1] & sets[2]
    smaller = task.make_splits(seed=0, sft=10, rl=5, heldout=500)
    assert smaller.heldout == splits.heldout
    assert smaller.rl == splits.rl[:5]


def test_difficulty_knobs_shape_the_expressions():
    config = task.TaskConfig(min_terms=3, max_terms=3, operators=('*', ))
    splits = task.make_splits(seed=1, sft=0, rl=0, heldout=50, config=config)
    assert all(len(e) == 5 and e[1] == e[3] == '*' for e in splits.heldout)
    default = task.make_splits(seed=1, sft=0, rl=0, heldout=400).heldout
    assert {(len(e) + 1) // 2 for e in default} == {4, 5, 6, 7}
    for bad in (dict(min_terms=1), dict(min_terms=5, max_terms=4), dict(operators=('/', )), dict(operators=())):
        with pytest.raises(ValueError, match='min_terms|operators'):
            task.TaskConfig(**bad)


def test_chain_is_left_to_right_mod_10():
    assert task.chain_answer('3+4*2-5') == '3+4=7 7*2=4 4-5=9 #9'
    assert task.direct_answer('3+4*2-5') == '#9'
    for expression in task.make_splits(seed=2, sft=0, rl=0, heldout=300).heldout:
        expected = _reference_value(expression)
        assert task.solve(expression) == expected
        steps = task.chain_answer(expression).split(' ')
        assert steps[-1] == f'#{expected}'
        assert len(steps) - 1 == len(expression) // 2
        assert all(task.STEP_PATTERN.fullmatch(step) for step in steps[:-1])


@pytest.mark.parametrize('completion, right', [
    ('3+4=7 7*2=4 4-5=9 #9', True),
    ('#9', True),
    ('#9 ', True),
    ('#09', True),  # the number, not its spelling, is graded
    ('3+4=7 7*2=4 4-5=9 #8', False),
    ('#8', False),
    ('', False),
    ('9', False),  # no '#'
    ('#9#9', False),  # more than one '#': no hedging between answers
    ('#8 #9', False),
    ('#9 and more', False),  # text after the answer
    ('# 9', False),
    ('#x', False),
])
def test_verifier_on_right_wrong_and_malformed_answers(completion, right):
    assert task.is_correct(completion, '9') is right
    assert task.reward(completion, 9) == (1.0 if right else 0.0)


def test_chain_detection():
    assert task.writes_chain('3+4=7 #7')
    assert not task.writes_chain('#7')
    assert not task.writes_chain('#3+4=7')  # a step after the answer is no reasoning
    assert not task.writes_chain('34=7 #7')


def test_reward_function_takes_trl_and_plain_completions():
    plain = reward_plugin.mod10_answer_reward(['1+1=2 #2', '#3', 'no'], solution=['2', '2', '2'])
    conversational = reward_plugin.mod10_answer_reward(
        [[{'role': 'assistant', 'content': '#2'}], [{'role': 'assistant', 'content': '#5'}]], solution=['2', '2'],
        prompts=['x', 'y'])
    assert plain == [1.0, 0.0, 0.0]
    assert conversational == [1.0, 0.0]
    with pytest.raises(ValueError, match='2 completions but 1 solutions'):
        reward_plugin.mod10_answer_reward(['#1', '#2'], solution=['1'])


def test_datasets_are_ms_swift_rows(tmp_path: Path):
    paths = task.write_datasets(tmp_path, seed=0, sft=400, rl=30, heldout=20, chain_share=0.5)
    sft = [json.loads(line) for line in paths['sft'].read_text().splitlines()]
    heldout = [json.loads(line) for line in paths['heldout'].read_text().splitlines()]
    chains = sum(task.writes_chain(row['messages'][-1]['content']) for row in sft)
    assert 150 < chains < 250  # about half the SFT answers write the chain
    for row in sft:
        system, user, answer = row['messages']
        assert (system['role'], user['role'], answer['role']) == ('system', 'user', 'assistant')
        assert task.is_correct(answer['content'], task.solve(user['content']))
    assert all(row['solution'] == str(task.solve(row['messages'][1]['content'])) for row in heldout)
    with pytest.raises(ValueError, match='chain_share'):
        task.write_datasets(tmp_path, chain_share=1.5)


@pytest.fixture(scope='module')
def saved_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp('learn-tokenizer')
    build_model.build_tokenizer().save_pretrained(out)
    return out


@NEEDS_TRANSFORMERS_5
def test_tokenizer_survives_reload_character_by_character(saved_tokenizer: Path):
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(saved_tokenizer)
    messages = task.sft_row('3+4*2-5', chain=True)['messages']
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False)['input_ids']
    assert tokenizer.decode(ids) == text  # spaces and newlines kept (a WordLevel vocabulary lost them)
    answer = messages[-1]['content']
    assert len(tokenizer(answer, add_special_tokens=False)['input_ids']) == len(answer)  # one token per character
    for name in build_model.ROLE_NAMES + build_model.SPECIAL_TOKENS:
        assert len(tokenizer(name, add_special_tokens=False)['input_ids']) == 1, name
    assert tokenizer.eos_token == '<|im_end|>' and tokenizer.pad_token == '<|endoftext|>'
    assert len(tokenizer) == 256 + len(build_model.role_merges()) + len(build_model.SPECIAL_TOKENS)


@NEEDS_TRANSFORMERS_5
def test_model_size_and_refusals():
    tokenizer = build_model.build_tokenizer()
    model = build_model.build_model(tokenizer)
    assert 0.9e6 < sum(p.numel() for p in model.parameters()) < 1.2e6
    assert model.config.vocab_size == len(tokenizer) and model.config.tie_word_embeddings
    with pytest.raises(ValueError, match='hidden a multiple of 32'):
        build_model.build_model(tokenizer, hidden=100)


def test_scores_from_answers():
    rows = [task.rl_row(e) for e in ('3+4*2-5', '1+1+1+1', '9*9*9*9', '2-3-4-5')]
    greedy = [('3+4=7 7*2=4 4-5=9 #9', 16), ('#4', 2), ('9*9=1 #2', 8), ('#5', 2)]  # right, right, wrong, wrong
    sampled = [[('#9', 2), ('#0', 2), ('#1', 2), ('#0', 2)], [('#0', 2), ('#4', 2), ('#1', 2), ('#0', 2)]]
    result = evaluate.score(rows, greedy, sampled)
    assert task.solve('2-3-4-5') == 0 and task.solve('9*9*9*9') == 1  # the fixture's right answers
    assert result['heldout/greedy_accuracy'] == 0.5
    assert result['heldout/pass@1'] == 6 / 8
    assert result['heldout/mean_length'] == 7.0
    assert result['heldout/chain_share'] == 0.5
    assert result['heldout/chain_accuracy'] == 0.5 and result['heldout/direct_accuracy'] == 0.5
    with pytest.raises(ValueError, match='one answer per row'):
        evaluate.score(rows, greedy[:3], [])


def test_checkpoints_are_found_in_step_order(tmp_path: Path):
    for name in ('checkpoint-32', 'checkpoint-8', 'v0-x/checkpoint-16', 'checkpoint-8-tmp', 'other'):
        (tmp_path / name).mkdir(parents=True)
    assert [step for step, _ in evaluate.checkpoints(tmp_path)] == [8, 16, 32]


def test_paired_statistics():
    differences = [0.02, 0.05, -0.01, 0.04, 0.03, 0.06, 0.01, 0.02]
    test = study.paired_test(differences)
    mean = sum(differences) / 8
    assert math.isclose(test['mean'], mean)
    assert math.isclose(test['t'], mean / (test['std'] / math.sqrt(8)))
    assert (test['wins'], test['losses']) == (7, 1)
    assert math.isclose(test['sign_test_p'], 2 * 9 / 256)  # P(X <= 1), X ~ Bin(8, 1/2), two-sided
    assert study.sign_test([0.0, 0.0]) == 1.0
    rng = random.Random(0)
    noise = [rng.gauss(0, 1) for _ in range(8)]
    assert study.paired_test(noise)['sign_test_p'] > 0.05 or abs(sum(noise)) > 2


@pytest.fixture(scope='module')
def saved_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_model.save(tmp_path_factory.mktemp('learn-model'), layers=1, hidden=32)


@pytest.mark.ms_swift
@only_where(importlib.util.find_spec('swift') is not None and ms_swift_version() >= (4, ) and TRANSFORMERS_5,
            'ms-swift 4.x template API with transformers 5.x (the example targets them)')
def test_evaluation_prompt_is_ms_swift_qwen_template(saved_model: Path):
    """evaluate.py prompts with the model's chat template; RL trains on ms-swift's qwen template: the same ids."""
    from swift.model import get_model_processor
    from swift.template import get_template
    _, tokenizer = get_model_processor(str(saved_model), model_type='qwen2', load_model=False)
    template = get_template(tokenizer, template_type='qwen')
    template.set_mode('pt')
    _, ours = evaluate.load_policy(saved_model)
    for expression in ('3+4*2-5', '9-9*9+0-1*2'):
        row = task.rl_row(expression)
        encoded = template.encode({'messages': row['messages']})
        prompt = ours.apply_chat_template(row['messages'], tokenize=False, add_generation_prompt=True)
        assert encoded['input_ids'] == ours(prompt, add_special_tokens=False)['input_ids']


def _token_row(step: int, pieces: list[tuple[str, float, float]]) -> dict:
    return {'step': step, 'tokens': [{'text': text, 'weight': weight, 'future_kl': future_kl}
                                     for text, weight, future_kl in pieces]}


def test_token_weights_sorts_a_chain_into_kinds_and_leaves_out_on_policy_steps():
    chain = [('3', 1.2, 0.3), ('+', 1.1, 0.1), ('4', 1.0, 0.0), ('=', 1.0, -0.1), ('7', 1.0, -0.2), ('#', 1.0, 0.0),
             ('7', 1.05, 0.05), ('<|im_end|>', 1.0, 0.0)]
    first_step = _token_row(1, [(text, 1.0, 0.0) for text, _, _ in chain])
    by_kind, by_quarter, reused = token_weights.summarize([first_step, _token_row(2, chain)], steps_per_rollout=5)
    assert reused == 1
    assert by_kind['operand digit'] == [(1.2, 0.3), (1.0, 0.0)] and by_kind['operator'] == [(1.1, 0.1)]
    assert by_kind['step result digit'] == [(1.0, -0.2)] and by_kind['answer digit'] == [(1.05, 0.05)]
    assert by_kind["'='"] == [(1.0, -0.1)] and by_kind['end of turn'] == [(1.0, 0.0)]
    assert [len(by_quarter[quarter]) for quarter in range(4)] == [2, 2, 2, 2]


def test_token_weights_refuses_a_first_step_with_weights_off_one():
    row = _token_row(6, [('3', 1.1, 0.1)])  # step 6 opens a rollout when 5 steps share one
    with pytest.raises(SystemExit, match='steps_per_rollout 5'):
        token_weights.summarize([row], steps_per_rollout=5)


def test_asking_for_more_prompts_than_the_knobs_allow_is_refused_not_a_hang():
    config = task.TaskConfig(min_terms=2, max_terms=2, operators=('+',))  # 100 expressions: 0+0 ... 9+9
    assert config.distinct_expressions() == 100
    assert len(set(task.make_splits(seed=1, sft=60, rl=20, heldout=20, config=config).sft)) == 60
    with pytest.raises(ValueError, match='give only 100 distinct expressions'):
        task.make_splits(seed=1, sft=81, rl=10, heldout=10, config=config)
