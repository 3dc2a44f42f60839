"""Chat-template arguments from config (prompts.format_options): Qwen3's `enable_thinking`, passed to the tokenizer's
own apply_chat_template by the r1 and qwen3 formats, as the engines render prompts."""

import pytest

from inference.config import load_settings
from inference.formats import get_format

# The two lines of Qwen3's chat template that `enable_thinking` controls, on the toy tokenizer's ChatML.
QWEN3_STYLE_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}{{ '<think>\\n\\n</think>\\n\\n' }}{%- endif -%}"
    "{%- endif -%}"
)
MESSAGES = [{"role": "user", "content": "1+1?"}]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = QWEN3_STYLE_TEMPLATE
    return tok


def rendered(fmt, tokenizer) -> str:
    return tokenizer.decode(fmt.prompt_ids(MESSAGES, tokenizer))


def test_enable_thinking_reaches_the_chat_template(tokenizer):
    thinking = "<|im_start|>user\n1+1?<|im_end|>\n<|im_start|>assistant\n"
    assert rendered(get_format("qwen3"), tokenizer) == thinking
    assert rendered(get_format("qwen3", enable_thinking=False), tokenizer) == thinking + "<think>\n\n</think>\n\n"
    assert rendered(get_format("r1"), tokenizer) == thinking  # no argument: the template's default
    no_thinking = get_format("r1", chat_template_kwargs={"enable_thinking": False})
    assert rendered(no_thinking, tokenizer) == thinking + "<think>\n\n</think>\n\n"


def test_template_arguments_come_from_the_config(tmp_path, tokenizer):
    path = tmp_path / "qwen3.yaml"
    path.write_text("prompts:\n  format: qwen3\n  format_options:\n    enable_thinking: false\n"
                    "    chat_template_kwargs: {custom_flag: 1}\n")
    settings = load_settings(path, engine="replay", traces="unused.jsonl", virtual_clock=True)
    fmt = get_format(settings.prompts.format, **settings.prompts.format_options)
    assert fmt.chat_template_kwargs == {"enable_thinking": False, "custom_flag": 1}
    assert rendered(fmt, tokenizer).endswith("<think>\n\n</think>\n\n")
    with pytest.raises(ValueError, match="format_options"):
        get_format("qwen3", reasoning_effort="high")
