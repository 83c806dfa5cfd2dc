"""A tiny Qwen2 chat model built locally (no model hub): WordLevel tokenizer + 2 layers, hidden 32."""

from __future__ import annotations

from pathlib import Path

import torch

SPECIAL_TOKENS = ['<|endoftext|>', '<|im_start|>', '<|im_end|>']
WORDS = ['a', 'b', 'c', 'd', 'e', 'one', 'two', 'three', 'count', 'say', 'the', 'cat', 'dog', 'runs', 'sits', 'user',
         'assistant', 'system', '.', '?', '\n']
CHAT_TEMPLATE = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
                 "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
PROMPTS = ['count a b c', 'say the cat runs', 'the dog sits .', 'say one two three ?']


def build_tiny_model(path: Path, seed: int = 0) -> Path:
    """Save a tokenizer and a randomly initialised 2-layer Qwen2ForCausalLM under ``path``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS + WORDS + ['<unk>'])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token='<unk>'))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token='<unk>', eos_token='<|im_end|>',
                                        pad_token='<|endoftext|>', bos_token=None,
                                        additional_special_tokens=SPECIAL_TOKENS[:2],
                                        model_input_names=['input_ids', 'attention_mask'])
    tokenizer.chat_template = CHAT_TEMPLATE

    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         tie_word_embeddings=False, bos_token_id=None, eos_token_id=vocab['<|im_end|>'],
                         pad_token_id=vocab['<|endoftext|>'])
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():
        # Random logits are near uniform; a larger init spreads them so completions differ.
        model.lm_head.weight.normal_(0.0, 0.5)
        # A random model rarely says <|im_end|>: push its logit up along the mean final hidden state
        # (about +2 for a typical position) so completions stop at varied lengths.
        sample = torch.randint(len(SPECIAL_TOKENS), len(vocab) - 1, (8, 12))
        mean_hidden = model.model(sample).last_hidden_state.mean((0, 1))
        model.lm_head.weight[vocab['<|im_end|>']] += 2.0 * mean_hidden / mean_hidden.square().sum()
    model.generation_config.eos_token_id = vocab['<|im_end|>']
    model.generation_config.pad_token_id = vocab['<|endoftext|>']
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
