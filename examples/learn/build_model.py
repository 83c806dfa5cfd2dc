"""Build the character-level Qwen2 of the learning example: tokenizer + random weights, offline.

    python examples/learn/build_model.py OUT_DIR [--layers 4] [--hidden 128] [--seed 0]

The tokenizer is byte-level BPE in exactly the form transformers 5.x rebuilds for a ``qwen2`` model
(``Qwen2Tokenizer`` from vocab + merges, whatever ``tokenizer_class`` says): the 256 byte-level symbols, ChatML's
specials, and merges only for the role names. Every digit, operator, space and newline is then one token, and the
tokenizer survives a save and reload unchanged (a WordLevel vocabulary loses spaces and newlines on reload).
Give ms-swift ``--model_type qwen2 --template qwen --check_model false``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2Tokenizer

SPECIAL_TOKENS = ['<|endoftext|>', '<|im_start|>', '<|im_end|>']
ROLE_NAMES = ['system', 'user', 'assistant']
CHATML_TEMPLATE = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
                   "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def byte_symbols() -> list[str]:
    """The 256 printable stand-ins GPT-2 style byte-level BPE uses for the bytes 0..255, in byte order."""
    printable = list(range(ord('!'), ord('~') + 1)) + list(range(ord('¡'), ord('¬') + 1)) + list(
        range(ord('®'), ord('ÿ') + 1))
    codes, extra = [], 0
    for byte in range(256):
        if byte in printable:
            codes.append(byte)
        else:
            codes.append(256 + extra)
            extra += 1
    return [chr(code) for code in codes]


def role_merges() -> list[tuple[str, str]]:
    """Left-to-right merges that make each role name one token (``s y -> sy``, ``sy s -> sys``, ...)."""
    merges: list[tuple[str, str]] = []
    for name in ROLE_NAMES:
        for end in range(2, len(name) + 1):
            pair = (name[:end - 1], name[end - 1])
            if pair not in merges:
                merges.append(pair)
    return merges


def build_tokenizer() -> Qwen2Tokenizer:
    """The character-level chat tokenizer: byte symbols, role-name merges, ChatML specials and template."""
    vocab = {symbol: index for index, symbol in enumerate(byte_symbols())}
    merges = role_merges()
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    for token in SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, eos_token='<|im_end|>',
                               pad_token='<|endoftext|>', additional_special_tokens=SPECIAL_TOKENS[1:])
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def build_model(tokenizer: Qwen2Tokenizer, layers: int = 4, hidden: int = 128, seed: int = 0) -> Qwen2ForCausalLM:
    """A Qwen2 with random weights sized for CPU: 4 layers x 128 hidden is ~1.0M parameters (tied embeddings)."""
    if layers < 1 or hidden < 32 or hidden % 32:
        raise ValueError(f'layers must be >= 1 and hidden a multiple of 32 (>= 32), got layers={layers}, '
                         f'hidden={hidden}')
    torch.manual_seed(seed)
    end = tokenizer.convert_tokens_to_ids('<|im_end|>')
    pad = tokenizer.convert_tokens_to_ids('<|endoftext|>')
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=4 * hidden,
                         num_hidden_layers=layers, num_attention_heads=hidden // 32, num_key_value_heads=hidden // 32,
                         max_position_embeddings=256, tie_word_embeddings=True, bos_token_id=None, eos_token_id=end,
                         pad_token_id=pad)
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = end
    model.generation_config.pad_token_id = pad
    return model


def save(out_dir: Path, layers: int = 4, hidden: int = 128, seed: int = 0) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(out_dir)
    build_model(tokenizer, layers, hidden, seed).save_pretrained(out_dir)
    return out_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('out_dir', type=Path)
    parser.add_argument('--layers', type=int, default=4)
    parser.add_argument('--hidden', type=int, default=128)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    try:
        path = save(args.out_dir, args.layers, args.hidden, args.seed)
    except ValueError as error:
        parser.error(str(error))
    print(f'model: {path}')


if __name__ == '__main__':
    main()
