"""Find, normalize and grade final answers. One module shared by voting, rewards and evaluation, so training
grades exactly as the server votes.

- `last_boxed`, `find_stop`: where the answer is in a completion, and where a streaming sample may be cut.
- `AnswerSpec`: the competition's answer range and modulus (the `answer:` section of configs/competitions/*.yaml).
- `parse_integer`: an answer string → int, or None when it is not exactly an integer. Plain regular expressions,
  no sympy: voting calls it on every sample.
- `extract_answer`: a completion → its vote (an int in the spec's range) or None (an invalid vote).
- `is_equivalent`: an answer string against a gold string: integers compared as integers, word answers literally,
  everything else with math-verify (thread-safe settings).
- `grade`: a completion against a gold string, for GRPO rewards and evaluation; None = "the gold gives no signal".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from inference.mappings import dataclass_from_mapping

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*")
_BRACE_RE = re.compile(r"[{}]")


def _matching_braces(text: str) -> dict[int, int]:
    """Index of each `{` → index of its matching `}`, in one pass (unclosed braces are absent). Scanning forward
    from every box instead is quadratic: a degenerate sample repeating `\\boxed{` took seconds per call."""
    match, stack = {}, []
    for m in _BRACE_RE.finditer(text):
        if m.group() == "{":
            stack.append(m.start())
        elif stack:
            match[stack.pop()] = m.start()
    return match


def _boxed_spans(text: str) -> list[tuple[int, int, str]]:
    """(start, end, content) of every complete \\boxed{...}/\\fbox{...} (nested braces) and `\\boxed 5`."""
    spans = []
    braces = None
    for m in _BOX_RE.finditer(text):
        i = m.end()
        if i < len(text) and text[i] == "{":
            if braces is None:
                braces = _matching_braces(text)
            j = braces.get(i)
            if j is not None:
                spans.append((m.start(), j + 1, text[i + 1 : j]))
        elif m.group(0).startswith("\\boxed") and m.end() > m.start() + len("\\boxed"):
            # `\boxed 5`: the argument is the next run of non-space characters up to `$`
            tail = re.match(r"[^\s$]+", text[i:])
            if tail:
                spans.append((m.start(), i + tail.end(), tail.group(0)))
    return spans


def last_boxed(text: str) -> str | None:
    """Content of the last complete \\boxed{...} (or \\fbox{...}, `\\boxed 5`) in text; None if there is none."""
    spans = _boxed_spans(text)
    return spans[-1][2] if spans else None


def find_stop(text: str, rule: str) -> int | None:
    """Where to cut a streaming sample that has committed to an answer, or None to keep generating.

    Rules (inference.engines.base.STOP_RULES):
      "think"       - at the end of the first `</think>` that has a complete \\boxed{} before it, else right after the
                      first complete \\boxed{} that follows `</think>`;
      "first_boxed" - right after the first complete \\boxed{...};
      "none"        - never.
    """
    if rule == "none":
        return None
    spans = _boxed_spans(text)
    if rule == "first_boxed":
        return spans[0][1] if spans else None
    if rule == "think":
        close = text.find("</think>")
        if close < 0:
            return None
        if any(end <= close for _, end, _ in spans):
            return close + len("</think>")
        after = [end for start, end, _ in spans if start >= close]
        return after[0] if after else None
    raise ValueError(f"stop_rule: unknown rule {rule!r}; choose think, first_boxed or none")


# -- the competition's answer format ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AnswerSpec:
    """Valid answers are integers in [min, max]; with `modulus` set, integers are reduced (Python `%`, so negatives
    wrap: -1 → 999 for modulus 1000) before the range check."""

    min: int = 0
    max: int = 99999
    modulus: int | None = None

    def __post_init__(self) -> None:
        for name in ("min", "max", "modulus"):
            value = getattr(self, name)
            if value is None and name == "modulus":
                continue
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"answer.{name} must be an integer, got {value!r}")
        if self.min > self.max:
            raise ValueError(f"answer.min ({self.min}) must not exceed answer.max ({self.max})")
        if self.modulus is not None and self.modulus < 1:
            raise ValueError(f"answer.modulus must be ≥ 1 or null, got {self.modulus}")

    @classmethod
    def from_config(cls, d: dict | None) -> "AnswerSpec":
        """From the `answer:` section of a competition YAML; missing keys take the defaults."""
        return cls() if d is None else dataclass_from_mapping(cls, d, "answer")

    def apply(self, n: int) -> int | None:
        """The vote an integer answer becomes: reduced by the modulus, None if outside [min, max]."""
        if self.modulus is not None:
            n %= self.modulus
        return n if self.min <= n <= self.max else None


# -- integers from answer strings ---------------------------------------------------------------------------------

_MAX_ANSWER_CHARS = 1000  # longer "answers" are garbage; this also keeps int() and math-verify fast
# Formatting commands whose argument is kept: \text{42} → 42. Boxes too, so a gold "\boxed{42}" reads as 42.
_WRAPPER_RE = re.compile(
    r"\\(?:boxed|fbox|text|textbf|textrm|textup|mathbf|mathrm|mathit|mathsf|boldsymbol|bm|mbox|operatorname)"
    r"\s*\{([^{}]*)\}"
)
# Units written after a number are dropped: 42\text{ cm}, 42 \text{ways}.
_TRAILING_UNIT_RE = re.compile(r"(?<=[\d}])\s*\\(?:text|mathrm|mbox)\s*\{[^{}\d]*\}(?=[\s}]*$)")
# Spacing, delimiters and sizing commands that never change the value.
_NOISE_RE = re.compile(r"\\left|\\right|\\displaystyle|\\[!,;: $]|\\\(|\\\)|\\\[|\\\]|\$|~")
_DEGREES_RE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°|\\degree")
_INT_RE = re.compile(r"([+-]?)(\d{1,3}(?:,\d{3})+|\d{1,3}(?: \d{3})+|\d+)(?:\.0*)?")
_FRAC_RE = re.compile(r"([+-]?)\s*\\[dtc]?frac\s*\{\s*([+-]?\d+)\s*\}\s*\{\s*([+-]?\d+)\s*\}")
_SLASH_RE = re.compile(r"([+-]?\d+)\s*/\s*([+-]?\d+)")


def parse_integer(s: str | int | None) -> int | None:
    """The integer an answer string denotes, or None when it is not exactly an integer.

    Accepted: `42`, `042`, `+42`, `-5`, `- 5`, `−5` (unicode minus), `1,000`, `1{,}000`, `1\\,000`, `1 000`, `42.0`,
    `42.` (sentence end), `$42$`, `\\(42\\)`, `\\text{42}`, `\\mathbf{42}`, `\\boxed{42}`, `{42}`, `(42)`,
    `x = 42` (the right-hand side, when the left has no comma), `\\frac{84}{2}` / `\\dfrac{84}{2}` / `84/2` (only
    when the division is exact). Units are dropped, as NeMo-Skills' grader does: `42^\\circ`, `42°`, `42\\%`,
    `42\\text{ cm}` → 42 (a degree or percent answer to an integer question is that integer).
    Not integers → None: `3.5`, `\\frac{1}{2}`, `\\sqrt{2}`, `1,2`, `2^{10}`, words.
    """
    if s is None or isinstance(s, bool):
        return None
    if isinstance(s, int):
        return s
    s = str(s).strip()
    if not s or len(s) > _MAX_ANSWER_CHARS:
        return None
    s = s.replace("\u2212", "-").replace("\u2013", "-").replace("{,}", ",")
    previous = None
    while previous != s:  # unwrap from the inside out: \boxed{\text{42}} → \boxed{42} → 42
        previous = s
        s = _WRAPPER_RE.sub(r"\1", _TRAILING_UNIT_RE.sub("", s))
    s = _NOISE_RE.sub(" ", s)
    s = _DEGREES_RE.sub("", s)
    s = re.sub(r"\\?%$", "", s.strip())
    s = s.strip().rstrip(".").strip()
    if "=" in s:
        left, s = s.rsplit("=", 1)
        if "," in left or ";" in left:  # `a=3, b=4`: several values, not one answer
            return None
        s = s.strip().rstrip(".").strip()
    while len(s) >= 2 and (s[0], s[-1]) in (("{", "}"), ("(", ")")):
        s = s[1:-1].strip()
    s = re.sub(r"\s+", " ", s)

    if m := _INT_RE.fullmatch(s) or _INT_RE.fullmatch(re.sub(r"^([+-]) ", r"\1", s)):
        value = int(re.sub(r"[, ]", "", m.group(2)))
        return -value if m.group(1) == "-" else value
    if m := _FRAC_RE.fullmatch(s):
        sign, num, den = m.group(1), int(m.group(2)), int(m.group(3))
    elif m := _SLASH_RE.fullmatch(s):
        sign, num, den = "", int(m.group(1)), int(m.group(2))
    else:
        return None
    if den == 0 or num % den:
        return None
    return -(num // den) if sign == "-" else num // den


# -- the vote of a completion -------------------------------------------------------------------------------------

_TAIL_CHARS = 1000  # an unboxed answer statement must lie in the last this-many characters
# Closing markup a completion may end with after its answer line.
_CLOSING_RE = re.compile(r"(?:\s|</think>|</answer>|<\|im_end\|>|<\|endoftext\|>|<\|eot_id\|>|</s>)+$")
# "The final answer is 42." / "Answer: $42$" / "**Answer:** 42" on the last line of the completion.
_ANSWER_LINE_RE = re.compile(
    r"\b(?:final\s+answer|answer)\b[\s*_]*(?:is|:|=)[\s*_:]*(?P<value>[^\n]+?)[\s*_.!]*$", re.IGNORECASE
)
# A "**Final Answer**" heading with the bare answer on the line below it.
_ANSWER_HEADING_RE = re.compile(
    r"\bfinal\s+answer\b[\s*_:#]*\n[\s*_]*(?P<value>[^\n]+?)[\s*_.!]*$", re.IGNORECASE
)


def _unboxed_answer(text: str) -> str | None:
    """The answer a completion without any \\boxed{} states on its last lines, or None.

    Only the end of the text counts ("... so the final answer is 42.", "Answer: 42", a "Final Answer" heading over
    a bare number): an "answer is" in the middle of the reasoning is an intermediate step, and a last number anywhere
    is no answer at all.
    """
    tail = _CLOSING_RE.sub("", text[-_TAIL_CHARS:])  # the tail only: "near the end", and linear time
    lines = [line for line in tail.splitlines() if line.strip()]
    if not lines:
        return None
    if m := _ANSWER_LINE_RE.search(lines[-1]):
        return m.group("value")
    if len(lines) >= 2 and (m := _ANSWER_HEADING_RE.search("\n".join(lines[-2:]))):
        return m.group("value")
    return None


def extract_answer(text: str, spec: AnswerSpec | None = None) -> int | None:
    """The vote of a completion: the content of its last \\boxed{} as an integer, or, with no box at all, the
    integer stated on its last line ("the final answer is 42"). With a spec, the integer is reduced by
    spec.modulus (if set) and must lie in [spec.min, spec.max]. None means an invalid vote: no answer, a non-integer
    last box, or out of range. No sympy: this runs on every sample."""
    if not text:
        return None
    boxed = last_boxed(text)
    value = parse_integer(boxed) if boxed is not None else parse_integer(_unboxed_answer(text))
    if value is None or spec is None:
        return value
    return spec.apply(value)


# -- equivalence and grading --------------------------------------------------------------------------------------

# Words only (names, "odd", "none"): compared literally; math-verify would read "Evelyn" as a product of symbols.
_WORDS_RE = re.compile(r"[A-Za-z][A-Za-z ,'-]*")


def _normalize_literal(s: str) -> str:
    """A light, value-preserving normalization for literal comparison: no markup, spacing, units or `\\dfrac`."""
    s = s.strip().replace("\u2212", "-").replace("{,}", ",")
    previous = None
    while previous != s:
        previous = s
        s = _WRAPPER_RE.sub(r"\1", s)
    s = _NOISE_RE.sub(" ", s)
    s = _DEGREES_RE.sub("", s)
    s = re.sub(r"\\?%$", "", s.strip())
    s = re.sub(r"\\[dtc]frac", r"\\frac", s)
    return re.sub(r"\s+", "", s).rstrip(".")


def _as_latex(s: str) -> str:
    """math-verify extracts LaTeX from math environments; bare strings get `$...$` (as NeMo-Skills does)."""
    if re.search(r"\$.*\$|\\\(.*\\\)|\\\[.*\\\]|\\boxed\{", s, re.DOTALL):
        return s
    return f"${s}$"


def _math_verify_parse(s: str, fallback_mode: str = "first_match") -> list:
    from math_verify import parse  # imported here: integer answers never pay for sympy

    # parsing_timeout=None: math-verify's timeout uses signal.alarm, which fails off the main thread (GRPO reward
    # workers, the server's threads). The length cap on answers is our guard against pathological inputs.
    return parse(_as_latex(s), parsing_timeout=None, fallback_mode=fallback_mode)


def is_equivalent(pred: str | int | None, gold: str | int | None) -> bool:
    """Whether answer string `pred` means the same as `gold`.

    Two integers (any form parse_integer accepts) → integer equality, without sympy. Otherwise a literal comparison
    after light normalization (markup, spacing, `\\dfrac`, units), word answers literally only, and then
    math-verify's parse/verify (gold first), e.g. \\frac{1}{2} = 0.5, 2\\sqrt{3} = \\sqrt{12}, (1,2) ≠ (2,1).
    Safe to call from any thread.
    """
    if pred is None or gold is None:
        return False
    pred, gold = str(pred), str(gold)
    pred_int, gold_int = parse_integer(pred), parse_integer(gold)
    if pred_int is not None and gold_int is not None:
        return pred_int == gold_int
    if len(pred) > _MAX_ANSWER_CHARS or len(gold) > _MAX_ANSWER_CHARS:
        return False
    pred_norm, gold_norm = _normalize_literal(pred), _normalize_literal(gold)
    if not pred_norm or not gold_norm:
        return False
    if pred_norm == gold_norm:
        return True
    if _WORDS_RE.fullmatch(pred_norm) and _WORDS_RE.fullmatch(gold_norm):
        return False
    from math_verify import verify

    try:
        gold_parsed, pred_parsed = _math_verify_parse(gold), _math_verify_parse(pred)
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))
    except Exception:  # noqa: BLE001 - sympy can raise anything on odd input; that is "not equivalent"
        return False


def _gold_is_usable(gold: str) -> bool:
    if len(gold) > _MAX_ANSWER_CHARS:
        return False
    norm = _normalize_literal(gold)
    if not norm:
        return False
    if _WORDS_RE.fullmatch(norm):
        return True
    try:
        return bool(_math_verify_parse(gold, fallback_mode="no_fallback"))
    except Exception:  # noqa: BLE001
        return False


def grade(text: str, gold: str | int | None, spec: AnswerSpec | None = None) -> bool | None:
    """Does completion `text` answer `gold`? For GRPO rewards and evaluation.

    Integer golds: the completion's vote (extract_answer, exactly as the server votes, with the spec's modulus and
    range) must equal the gold (reduced by the same modulus). Other golds: the last \\boxed{} must be equivalent
    (is_equivalent). None when the gold gives no signal: empty, unparseable, or an integer outside the spec's
    range; callers must skip such items, never count them as correct.
    """
    if gold is None:
        return None
    gold_int = parse_integer(gold)
    if gold_int is not None:
        if spec is not None:
            gold_int = spec.apply(gold_int)
            if gold_int is None:
                return None
        return extract_answer(text, spec) == gold_int
    gold = str(gold)
    if not _gold_is_usable(gold):
        return None
    pred = last_boxed(text or "")
    return pred is not None and is_equivalent(pred, gold)
