"""Build a tiny random Qwen2 chat model and a toy prompt dataset, offline, for CPU GRPO runs.

    python examples/tiny/build_tiny_model.py OUT_DIR

writes OUT_DIR/model (tokenizer + 2-layer Qwen2, random weights) and OUT_DIR/train.jsonl. The model
knows nothing; it only has to sample completions of varied length so that rewards, advantages and
(with reuse) FIPO weights vary. Pass ms-swift ``--model_type qwen2 --template qwen --check_model false``.
"""

from __future__ import annotations

import argparse
import json
import string
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

SPECIAL_TOKENS = ['<|endoftext|>', '<|im_start|>', '<|im_end|>']
CHATML_TEMPLATE = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
                   "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
WORDS = ['one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine', 'ten', 'add', 'sum', 'think',
         'answer', 'so', 'then', 'is', 'the', 'of', 'and']
# How much more likely than an average token the model is to close its turn; ~1/6 per step makes
# completions of a 32-token budget end at visibly different lengths.
EOS_LOGIT_BIAS = 3.0


def build_tokenizer() -> PreTrainedTokenizerFast:
    # Word-level vocabulary over letters, digits, punctuation and a few words: every prompt tokenizes.
    pieces = SPECIAL_TOKENS + ['<unk>', '\n', ' '] + list(string.ascii_letters + string.digits + string.punctuation)
    pieces += WORDS + ['system', 'user', 'assistant']
    vocab = {piece: index for index, piece in enumerate(dict.fromkeys(pieces))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token='<unk>'))
    backend.pre_tokenizer = pre_tokenizers.Split(
        pattern=_word_pattern(), behavior='isolated')
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token='<unk>', eos_token='<|im_end|>',
                                        pad_token='<|endoftext|>', bos_token=None)
    tokenizer.add_special_tokens({'additional_special_tokens': SPECIAL_TOKENS})
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def _word_pattern():
    from tokenizers import Regex
    words = '|'.join(sorted(WORDS + ['system', 'user', 'assistant'], key=len, reverse=True))
    return Regex(f'{words}|.|\\n')


def build_model(tokenizer: PreTrainedTokenizerFast, seed: int) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=False, bos_token_id=None,
                         eos_token_id=tokenizer.convert_tokens_to_ids('<|im_end|>'),
                         pad_token_id=tokenizer.convert_tokens_to_ids('<|endoftext|>'))
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():
        end = tokenizer.convert_tokens_to_ids('<|im_end|>')
        # Random logits are near-uniform; lift the end-of-turn row so completions stop at varied lengths.
        weight = model.lm_head.weight
        weight[end] = weight.mean(0) + EOS_LOGIT_BIAS * model.model.norm.weight / model.model.norm.weight.norm()
    model.generation_config.eos_token_id = end
    model.generation_config.pad_token_id = config.pad_token_id
    return model


def write_dataset(path: Path, rows: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with path.open('w') as handle:
        for _ in range(rows):
            a, b = (int(v) for v in torch.randint(0, 10, (2,), generator=generator))
            record = {'messages': [{'role': 'user', 'content': f'add {a} and {b}'}], 'solution': str(a + b)}
            handle.write(json.dumps(record) + '\n')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('out_dir', type=Path)
    parser.add_argument('--rows', type=int, default=64, help='prompts in train.jsonl')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    model_dir = args.out_dir / 'model'
    model_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(model_dir)
    build_model(tokenizer, args.seed).save_pretrained(model_dir)
    write_dataset(args.out_dir / 'train.jsonl', args.rows, args.seed)
    print(f'tiny model: {model_dir}\ndataset: {args.out_dir / "train.jsonl"}')


if __name__ == '__main__':
    main()
