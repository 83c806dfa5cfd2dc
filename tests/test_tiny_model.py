"""The tiny local model's tokenizer (examples/tiny/build_tiny_model.py) survives the reload ms-swift makes.

transformers 5.x reloads the tokenizer saved beside a ``qwen2`` config as ``Qwen2Tokenizer`` (byte-level BPE
rebuilt from the vocabulary and merges), whatever tokenizer_config.json names; transformers 4.57 (ms-swift 3.x)
reads tokenizer.json as saved. Either way, a ChatML conversation with spaces, newlines and tabs must come back
byte for byte, through ``AutoTokenizer`` and through ms-swift's own model loader and ``qwen`` template.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from types import ModuleType

import pytest
from conftest import TINY_BUILDER, ms_swift_version, need

pytestmark = [pytest.mark.ms_swift]
need('swift', 'ms-swift')

CONVERSATION = [
    {'role': 'system', 'content': 'Answer with the chain.'},
    {'role': 'user', 'content': 'add 3 and 4\n  then 3+4*2-5\tdone'},
    {'role': 'assistant', 'content': '3+4=7 7*2=4 4-5=9 #9'},
]
CHATML = ('<|im_start|>system\nAnswer with the chain.<|im_end|>\n'
          '<|im_start|>user\nadd 3 and 4\n  then 3+4*2-5\tdone<|im_end|>\n'
          '<|im_start|>assistant\n3+4=7 7*2=4 4-5=9 #9<|im_end|>\n')


def _builder() -> ModuleType:
    spec = importlib.util.spec_from_file_location('build_tiny_model', TINY_BUILDER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def saved_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    builder = _builder()
    model_dir = tmp_path_factory.mktemp('tiny-tokenizer') / 'model'
    tokenizer = builder.build_tokenizer()
    tokenizer.save_pretrained(model_dir)
    builder.build_model(tokenizer, seed=0).save_pretrained(model_dir)
    assert json.loads((model_dir / 'config.json').read_text())['model_type'] == 'qwen2'
    return model_dir


def test_auto_tokenizer_round_trips_chatml(saved_model: Path) -> None:
    from transformers import AutoTokenizer
    reloaded = AutoTokenizer.from_pretrained(saved_model)
    built = _builder().build_tokenizer()
    text = reloaded.apply_chat_template(CONVERSATION, tokenize=False)
    assert text == CHATML
    ids = reloaded(text)['input_ids']
    assert reloaded.decode(ids) == CHATML
    assert ids == built(text)['input_ids']  # the reloaded form splits text exactly as the built one
    # One token per character except the role names and the ChatML markers.
    tokens = reloaded.convert_ids_to_tokens(ids)
    assert tokens[:3] == ['<|im_start|>', 'system', 'Ċ']
    assert len(ids) == len(CHATML.encode()) - sum(len(word) - 1 for word in ('system', 'user', 'assistant')) - sum(
        (len(marker) - 1) * CHATML.count(marker) for marker in ('<|im_start|>', '<|im_end|>'))
    assert reloaded.eos_token == '<|im_end|>' and reloaded.pad_token == '<|endoftext|>'
    assert reloaded.eos_token_id != reloaded.pad_token_id


def test_ms_swift_template_encodes_the_conversation_exactly(saved_model: Path) -> None:
    os.environ.setdefault('HF_HUB_OFFLINE', '1')
    if ms_swift_version() >= (4, ):
        from swift.model import get_model_processor
        from swift.template import get_template
        _, tokenizer = get_model_processor(str(saved_model), model_type='qwen2', load_model=False)
        template = get_template(tokenizer, template_type='qwen')
    else:  # ms-swift 3.x layout
        from swift.llm import get_model_tokenizer, get_template
        _, tokenizer = get_model_tokenizer(str(saved_model), model_type='qwen2', load_model=False)
        template = get_template('qwen', tokenizer)
    template.set_mode('train')
    encoded = template.encode({'messages': CONVERSATION})
    assert tokenizer.decode(encoded['input_ids']) == CHATML
    trained = [token for token, label in zip(encoded['input_ids'], encoded['labels'], strict=False) if label != -100]
    assert tokenizer.decode(trained) == '3+4=7 7*2=4 4-5=9 #9<|im_end|>\n'
