"""Build a tiny random Qwen2 chat model and a toy prompt dataset, offline, for CPU GRPO runs.

    python examples/tiny/build_tiny_model.py OUT_DIR

writes OUT_DIR/model (tokenizer + 2-layer Qwen2, random weights) and OUT_DIR/train.jsonl. The model
knows nothing; it only has to sample completions of varied length so that rewards, advantages and
(with reuse) FIPO weights vary. Pass ms-swift ``--model_type qwen2 --template qwen --check_model false``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

SPECIAL_TOKENS = ['<|endoftext|>', '<|im_start|>', '<|im_end|>']
CHATML_TEMPLATE = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
                   "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# The only multi-byte tokens: the ChatML role names, so that every other text is one token per byte.
ROLE_NAMES = ['system', 'user', 'assistant']
# Qwen2's own pre-tokenization split (words, single digits, punctuation runs, whitespace), applied before
# the byte-level mapping, as in the Qwen2 tokenizer transformers rebuilds from vocab.json + merges.txt.
QWEN2_SPLIT_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
                       r"""\s*[\r\n]+|\s+(?!\S)|\s+""")
# How much the end-of-turn logit is lifted above an average token's: with the byte-level vocabulary, 1.5 makes
# completions of a 32-token budget end anywhere from 1 to 32 tokens (3.0 ended most after one token).
EOS_LOGIT_BIAS = 1.5


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for the bytes 0-255, in byte order."""
    printable = list(range(ord('!'), ord('~') + 1)) + list(range(ord('\xa1'), ord('\xac') + 1)) + list(
        range(ord('\xae'), ord('\xff') + 1))
    symbols, shifted = {}, 0
    for byte in range(256):
        if byte in printable:
            symbols[byte] = chr(byte)
        else:  # whitespace and control bytes are moved above 255, as GPT-2 and Qwen2 do
            symbols[byte] = chr(256 + shifted)
            shifted += 1
    return [symbols[byte] for byte in range(256)]


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE chat tokenizer in the form transformers reloads for a ``qwen2`` model.

    transformers 5.x rebuilds the tokenizer saved beside a ``qwen2`` config as ``Qwen2Tokenizer`` (byte-level
    BPE from vocab.json + merges.txt) whatever tokenizer_config.json names; any other vocabulary (e.g. word
    level) then silently loses spaces and newlines. So this is that form: the 256 byte symbols, merges only
    for the role names (every other character is one token), and the ChatML specials after them.
    """
    vocab = {symbol: index for index, symbol in enumerate(_byte_symbols())}
    merges = []
    for name in ROLE_NAMES:  # left to right: 'u s' -> 'us', 'us e' -> 'use', 'use r' -> 'user'
        for end in range(2, len(name) + 1):
            merges.append((name[:end - 1], name[end - 1]))
            vocab.setdefault(name[:end], len(vocab))
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, continuing_subword_prefix='', end_of_word_suffix='',
                                   fuse_unk=False, byte_fallback=False))
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT_PATTERN), behavior='isolated', invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(SPECIAL_TOKENS)  # ids right after the vocabulary, in the order listed
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token='<|im_end|>', pad_token='<|endoftext|>',
                                        unk_token=None, bos_token=None)
    tokenizer.add_special_tokens({'additional_special_tokens': SPECIAL_TOKENS})
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


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
