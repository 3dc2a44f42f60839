"""Build a tokenizer and a tiny Qwen2 model from scratch, saved like any hub checkpoint.

    python -m train.toy.model_factory --out models/tiny-random

The result loads with `AutoModelForCausalLM.from_pretrained(dir)` and with vLLM, so tests and the toy recipe use
exactly the loading code a 14B checkpoint goes through. Every Linear layer's input size is a multiple of 128 so
AWQ (group size 128) can quantize it, and the head size (64 by default, 32 for the toy recipe's 4 heads) is one
vLLM's CPU attention supports.
"""

from __future__ import annotations

import argparse
from pathlib import Path

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Plain (non-special) added tokens: decoders strip special tokens, and rewards and answer rules must see these.
THINK_TOKENS = ["<think>", "</think>"]

# ChatML, the format of Qwen2 chat models.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


def build_tokenizer(corpus: list[str], vocab_size: int = 320):
    """Byte-level BPE with every digit its own token (so numbers are spelled digit by digit)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        model_max_length=4096,
    )
    fast.add_tokens(THINK_TOKENS)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(tokenizer, hidden_size: int = 128, num_layers: int = 4, intermediate_size: int = 512, seed: int = 0,
                head_dim: int = 64, num_key_value_heads: int = 1):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    if hidden_size % 128 or intermediate_size % 128:
        raise ValueError(
            f"hidden_size={hidden_size} and intermediate_size={intermediate_size} must be multiples of 128 "
            "(AWQ quantizes in groups of 128 input features)"
        )
    if hidden_size % head_dim or (hidden_size // head_dim) % num_key_value_heads:
        raise ValueError(f"head_dim={head_dim} must divide hidden_size={hidden_size} into a multiple of "
                         f"num_key_value_heads={num_key_value_heads} heads")
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=hidden_size // head_dim,
        num_key_value_heads=num_key_value_heads,
        head_dim=head_dim,
        max_position_embeddings=4096,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def successor_head(embeddings, ids: list[int], scale: float):
    """An output head that maps each token of `ids` onto the next one with a logit of about `scale` × the token's
    normalized embedding norm, and every other token to 0. With attention and MLP outputs zeroed (the last hidden
    state is then the current token's normalized embedding), a model with this head writes `ids` in order whatever
    the seed: how the tests script tiny models. The tokens must all differ (each has one successor)."""
    import torch

    if len(set(ids)) != len(ids):
        raise ValueError(f"script: its tokens must all differ, got {ids}")
    head = torch.zeros_like(embeddings)
    for current, following in zip(ids, ids[1:]):
        head[following] = scale * embeddings[current] / embeddings[current].float().norm()
    return head


def make_tiny_model(out_dir: str | Path, seed: int = 0, corpus: list[str] | None = None, **model_kwargs) -> Path:
    """Build, save and return the directory of a random-weight tiny model with its tokenizer."""
    from train.toy.task import tokenizer_corpus

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(corpus if corpus is not None else tokenizer_corpus())
    model = build_model(tokenizer, seed=seed, **model_kwargs)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="directory to write the model and tokenizer to")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--num-layers", type=int, default=4)
    parser.add_argument("--intermediate-size", type=int, default=512)
    args = parser.parse_args()
    out = make_tiny_model(
        args.out,
        seed=args.seed,
        hidden_size=args.hidden_size,
        num_layers=args.num_layers,
        intermediate_size=args.intermediate_size,
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
