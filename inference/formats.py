"""Chat formats: how one model family's prompts, tool calls and answers look as tokens and text.

A sample with tools is a conversation of turns (inference/tools.py): the engine generates until the format's stop
string or token (a tool call), the sandbox runs the call, and the next turn's prompt is the previous prompt + the
turn's tokens + the tool output framed the family's way. Each turn's prompt extends the last one, so vLLM's prefix
cache reuses all of it. Without tools a sample is a single turn and only `prompt_ids` and `answer_text` matter.

    fmt = get_format("python_block")
    ids = fmt.prompt_ids(messages, tokenizer)        # first turn's prompt
    call = fmt.tool_call(turn_text, turn_ids)         # ToolCall(code=...) when this turn ended at a tool call
    ids = fmt.continue_ids(ids, turn_ids, output, tokenizer)

Formats here (chosen with `prompts.format` in the inference config):
  r1            the tokenizer's chat template, no tools (the DeepSeek-R1 / Fast-Math-R1 models); template arguments
                from `chat_template_kwargs`
  qwen3         r1 with Qwen3's `enable_thinking` template argument (default on)
  python_block  fenced ```python blocks; output fed back as ```output blocks (Numina, Qwen2.5-Math-TIR, the toy)
  tool_call     code inside <tool_call> ... </tool_call>, output as ```output blocks (OpenMath-Nemotron / NemoSkills)
  harmony       gpt-oss's Harmony format, in inference/harmony.py (imported on first use)
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable


@dataclass
class ToolCall:
    code: str  # the Python source the model asked to run


class ChatFormat:
    """The chat template only: no tool calls; the answer is the whole completion."""

    name = "r1"
    stop_strings: list[str] = []  # strings that end a turn at a tool call (kept in the output)
    stop_token_ids: list[int] = []  # the same as token ids (Harmony's <|call|>)
    skip_special_tokens = True  # False where the format's markers are special tokens (Harmony)

    def __init__(self, chat_template_kwargs: dict | None = None) -> None:
        """`chat_template_kwargs` go to `tokenizer.apply_chat_template` (e.g. {"enable_thinking": true} for Qwen3)."""
        self.chat_template_kwargs = dict(chat_template_kwargs or {})

    def prompt_ids(self, messages: list[dict], tokenizer) -> list[int]:
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False,
                                               **self.chat_template_kwargs)
        return tokenizer.encode(prompt, add_special_tokens=False)  # the template already has its specials

    def tool_call(self, turn_text: str, turn_token_ids: list[int]) -> ToolCall | None:
        return None

    def frame_output(self, tool_output: str) -> str:
        """The tool output as the model reads it (the text added after a tool call)."""
        return tool_output

    def continue_ids(self, prompt_ids: list[int], turn_token_ids: list[int], tool_output: str | None,
                     tokenizer) -> list[int]:
        """The next turn's prompt. `tool_output` None: the turn hit a stop string that was no tool call; generation
        just goes on."""
        ids = list(prompt_ids) + list(turn_token_ids)
        if tool_output is not None:
            ids += tokenizer.encode(self.frame_output(tool_output), add_special_tokens=False)
        return ids

    def answer_text(self, completion_text: str, turn_token_ids: list[list[int]] | None = None) -> str:
        """The part of the completion the vote reads. `turn_token_ids`: the ids each turn generated, for formats
        whose answer lies in the model's own tokens (Harmony's final channel); here the text is the answer."""
        return completion_text


class CodeBlockFormat(ChatFormat):
    """Code between `code_begin` and `code_end` (the stop string); output fed back between `output_begin` and
    `output_end`. Everything else comes from the tokenizer's chat template."""

    name = "python_block"
    code_begin = "```python\n"
    code_end = "```\n"
    output_begin = "```output\n"
    output_end = "```\n"

    def __init__(self, chat_template_kwargs: dict | None = None) -> None:
        super().__init__(chat_template_kwargs)
        self.stop_strings = [self.code_end]
        self.stop_token_ids = []

    def tool_call(self, turn_text: str, turn_token_ids: list[int]) -> ToolCall | None:
        """The code block this turn closed last, if the turn ended by closing one."""
        if not turn_text.endswith(self.code_end):
            return None
        start = turn_text.rfind(self.code_begin)
        if start < 0:
            return None
        code = turn_text[start + len(self.code_begin): len(turn_text) - len(self.code_end)]
        if self.code_end.strip() in code:  # the code block closed earlier; this stop closed some other block
            return None
        return ToolCall(code=code)

    def call_text(self, code: str) -> str:
        """A tool call written the way the model writes it (for building training traces)."""
        return f"{self.code_begin}{code.rstrip()}\n{self.code_end}"

    def frame_output(self, tool_output: str) -> str:
        body = tool_output if tool_output.endswith("\n") or not tool_output else tool_output + "\n"
        return f"{self.output_begin}{body}{self.output_end}"


class ToolCallTagFormat(CodeBlockFormat):
    """NemoSkills' OpenMath tags: <tool_call>\\ncode\\n</tool_call>, output in a ```output block."""

    name = "tool_call"
    code_begin = "<tool_call>\n"
    code_end = "</tool_call>"
    output_begin = "\n```output\n"
    output_end = "```\n"

    def call_text(self, code: str) -> str:
        return f"{self.code_begin}{code.rstrip()}\n{self.code_end}"


class Qwen3Format(ChatFormat):
    """Qwen3's hybrid thinking models: the chat template with `enable_thinking` (on by default; off, the template
    writes an empty <think></think> and the model answers at once). Other template arguments as for r1."""

    name = "qwen3"

    def __init__(self, enable_thinking: bool = True, chat_template_kwargs: dict | None = None) -> None:
        super().__init__({"enable_thinking": bool(enable_thinking), **(chat_template_kwargs or {})})


FORMATS: dict[str, Callable[..., ChatFormat]] = {
    "r1": ChatFormat,
    "qwen3": Qwen3Format,
    "python_block": CodeBlockFormat,
    "tool_call": ToolCallTagFormat,
}
# Formats whose module registers them in FORMATS when imported (kept out of the import of this module).
_MODULES = {"harmony": "inference.harmony"}


def get_format(name: str, **options) -> ChatFormat:
    """The format called `name`, built with its options (the config's `prompts.format_options`)."""
    if name not in FORMATS and name in _MODULES:
        importlib.import_module(_MODULES[name])
    if name not in FORMATS:
        known = ", ".join(sorted(set(FORMATS) | set(_MODULES)))
        raise ValueError(f"prompts.format: unknown format {name!r}; choose one of {known}")
    try:
        return FORMATS[name](**options)
    except TypeError as e:
        raise ValueError(f"prompts.format_options: {e}") from None
