"""Find and normalize final answers: one module shared by voting, rewards and evaluation, so training grades
exactly as the server votes (grading against a gold answer is inference/grading.py).

- `last_boxed`: where the answer is in a completion.
- `StopDetector`, `find_stop`: where a streaming sample may be cut (the stop rules), fed delta by delta in time linear
  in the new text; `find_stop(text, rule)` is one detector fed the whole text, so both always agree.
- `AnswerSpec`: the competition's answer range and modulus (the `answer:` section of configs/competitions/*.yaml).
- `parse_integer`: an answer string → int, or None when it is not exactly an integer. Plain regular expressions and
  a bounded integer-arithmetic reader (`2^{10}`, `\\binom{7}{2}`, `5!`, `\\sqrt{49}`), no sympy: voting calls it on
  every sample.
- `extract_answer`: a completion → its vote (an int in the spec's range) or None (an invalid vote); the final
  answer after `</think>` wins over boxes inside the thinking.
"""

from __future__ import annotations

import ast
import math
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


# -- stop detection while streaming ------------------------------------------------------------------------------

# How a sample ends early once it has committed to an answer (StopDetector says where). The engines list these too.
STOP_RULES = ("boxed_after_think", "think", "first_boxed", "none")

# What a stop rule reacts to: a box opening (`\boxed{`, `\fbox {`), any other brace, and `</think>`. A `\boxed` at the
# very end of the text so far may still get its `{` (group "pending").
_STOP_TOKEN_RE = re.compile(r"\\(?:boxed|fbox)\s*(?:(\{)|(?P<pending>\Z))|[{}]|</think>")
_STOP_TRIGGER_RE = re.compile(r"[{}\\<]")  # a delta without these characters cannot change the detector's state
_PARTIAL_TOKENS = ("\\boxed", "\\fbox", "</think>")  # a delta may end inside one of these
_SPACE_RE = re.compile(r"\s*")


class StopDetector:
    """Where to cut one streaming sample, fed its text delta by delta: `feed(delta)` returns the cut index (into the
    whole text so far) once the sample has committed to an answer, else None. Each delta costs time in its own
    length only: the brace stack, whether `</think>` was seen and whether a box was completed before it are kept
    between deltas, and a token split across deltas (`\\bo` + `xed{`) is carried over. Rescanning the whole text
    on every `}` instead cost seconds of CPU per 16k-token LaTeX-heavy sample once a box existed (benchmark.py).

    Rules (inference.engines.base.STOP_RULES):
      "boxed_after_think" - right after the first complete \\boxed{} that opens after the first `</think>`: the final
                            answer; a tentative box inside the thinking never cuts;
      "think"             - at the end of the first `</think>` if a \\boxed{} was completed before it, else as
                            "boxed_after_think" (for models trained to commit to their answer before `</think>`);
      "first_boxed"       - right after the first complete \\boxed{...};
      "none"              - never.
    A box is complete when the brace its `{` opened closes (braces of any kind are matched; a stray `}` is ignored);
    with nested boxes the inner one completes first. The brace-less `\\boxed 5` never cuts (its end is unknown while
    streaming); the sample runs on and `extract_answer` still reads it. Once a cut is found, feed keeps returning it.
    """

    def __init__(self, rule: str) -> None:
        if rule not in STOP_RULES:
            raise ValueError(f"stop_rule: unknown rule {rule!r}; choose one of {', '.join(STOP_RULES)}")
        self.rule = rule
        self.cut: int | None = None
        self._read = 0  # characters fed so far
        self._carry = ""  # the end of the text so far when it may be the start of a token
        self._awaiting_brace = False  # the text so far ends in `\boxed` + spaces
        self._braces: list[bool | None] = []  # open braces: None = not a box's; else whether it opened after </think>
        self._closed_think = False  # the first </think> was read
        self._boxed_before_close = False  # a box completed before it

    def feed(self, delta: str) -> int | None:
        if self.cut is not None or self.rule == "none":
            return self.cut
        base = self._read - len(self._carry)  # index of text[0] in the whole sample
        self._read += len(delta)
        if not self._carry and not self._awaiting_brace and not _STOP_TRIGGER_RE.search(delta):
            return None  # the common case: ordinary words
        text, self._carry = self._carry + delta, ""
        pos = 0
        if self._awaiting_brace:
            pos = _SPACE_RE.match(text).end()
            if pos == len(text):
                return None  # still only spaces after `\boxed`
            self._awaiting_brace = False
            if text[pos] == "{":
                self._braces.append(self._closed_think)
                pos += 1
        end = pos
        for m in _STOP_TOKEN_RE.finditer(text, pos):
            end = m.end()
            token = m.group()
            if token == "}":
                if self._braces and (opened_after_close := self._braces.pop()) is not None:
                    self.cut = self._box_completed(opened_after_close, base + end)
            elif token == "{":
                self._braces.append(None)
            elif token == "</think>":
                if not self._closed_think:
                    self._closed_think = True
                    if self.rule == "think" and self._boxed_before_close:
                        self.cut = base + end
            elif m.group(1):  # `\boxed{`
                self._braces.append(self._closed_think)
            elif m.group("pending") is not None:
                self._awaiting_brace = True
            if self.cut is not None:
                return self.cut
        tail = text[end:]
        start = max(tail.rfind("\\"), tail.rfind("<"))
        if start >= 0 and any(token.startswith(tail[start:]) for token in _PARTIAL_TOKENS):
            self._carry = tail[start:]
        return None

    def _box_completed(self, opened_after_close: bool, end: int) -> int | None:
        if self.rule == "first_boxed":
            return end
        if not self._closed_think:
            self._boxed_before_close = True
            return None
        return end if opened_after_close else None


def find_stop(text: str, rule: str) -> int | None:
    """Where to cut a sample whose text so far is `text` (rules: StopDetector), or None to keep generating. The same
    answer a StopDetector fed the text in any chunks gives, which is what the streaming engines use."""
    return StopDetector(rule).feed(text)


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
# Units written after a number are dropped: 42\text{ cm}, 42 \text{ways}, 42\ \text{units}, 42 \, \text{cm}^2.
_TRAILING_UNIT_RE = re.compile(
    r"(?<=[\d}])(?:\s|~|\\[ ,;:!])*\\(?:text|mathrm|mbox)\s*\{[^{}\d]*\}(?:\^\s*\{?\s*[23]\s*\}?)?(?=[\s}]*$)"
)
# A number with words after it inside text mode: \text{42 ways} → 42 (a second number makes it no answer).
_TEXT_WORDS_RE = re.compile(r"\\(?:text|textrm|textup|mbox|mathrm)\s*\{\s*([+-]?[\d,.]*\d)\s+[A-Za-z][A-Za-z .'-]*\}")
# A set of one element: \{42\} → 42.
_SET_RE = re.compile(r"^\\\{\s*(.*?)\s*\\\}$")
# A multiple-choice label before the value: `\textbf{(B) } 42`, `(B) 42`, `B) 42` → 42.
_CHOICE_RE = re.compile(r"^\(?[A-E]\)\s*(?=\S)")
# A number written in a base: 42_{10} → 42, 101_2 → 5, (12)_8 → 10.
_BASE_RE = re.compile(r"\(?([0-9A-Za-z]+)\)?\s*_\s*\{?\s*(\d+)\s*\}?")
# Spacing, delimiters and sizing commands that never change the value.
_NOISE_RE = re.compile(r"\\left|\\right|\\displaystyle|\\[!,;: $]|\\\(|\\\)|\\\[|\\\]|\$|~")
_DEGREES_RE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°|\\degree")
_INT_RE = re.compile(r"([+-]?)(\d{1,3}(?:,\d{3})+|\d{1,3}(?: \d{3})+|\d+)(?:\.0*)?")
_FRAC_RE = re.compile(r"([+-]?)\s*\\[dtc]?frac\s*\{\s*([+-]?\d+)\s*\}\s*\{\s*([+-]?\d+)\s*\}")
_SLASH_RE = re.compile(r"([+-]?\d+)\s*/\s*([+-]?\d+)")
# `42 \pmod{1000}`, `2024 \bmod 1000`, `42 \mod 1000`, `42 (mod 1000)`: the value reduced by that modulus (AIMO-2).
_MOD_RE = re.compile(r"(?P<value>.+?)\s*\(?\s*(?:\\[pb]?mod(?![A-Za-z])|\bmod\b)\s*\{?\s*(?P<modulus>\d+)\s*\}?\s*\)?")

# Simple integer expressions (`2^{10}`, `3 \\times 7`, `(2+3)^2`, `\\binom{7}{2}`, `5!`, `\\sqrt{49}`): parsed with
# `ast` into a tree of integer constants, + - * / ^ and the calls binom/fact/sqrt/root only (never evaluated as code),
# computed with bounds so `2^{100000}` or `99999!` is refused, not computed.
_EXPR_OPERATORS = (("\\times", "*"), ("\\cdot", "*"), ("\u00d7", "*"), ("\u22c5", "*"), ("\\div", "/"))
_BINOM_RE = re.compile(r"\\[dt]?binom\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_ROOT_RE = re.compile(r"\\sqrt\s*\[\s*(\d+)\s*\]\s*\{([^{}]*)\}")
_SQRT_RE = re.compile(r"\\sqrt\s*(?:\{([^{}]*)\}|(\d+))")
_FRAC_EXPR_RE = re.compile(r"\\[dtc]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_FACT_RE = re.compile(r"(\d+|\([^()]*\)|\{[^{}]*\})\s*!(?!!)")
_TIMES_CALL_RE = re.compile(r"(\d)\s*(?=binom|sqrt|root)")  # `2\sqrt{16}`
_CLOSE_TIMES_RE = re.compile(r"\)\s*(?=binom|sqrt|root|fact|\()")  # `4!\,4!`, `(2)(3)`
_EXPR_CHARS_RE = re.compile(r"(?:[\d\s+\-*/^(){},]|binom|fact|sqrt|root)*")
_EXPR_WORK_RE = re.compile(r"[+\-*/^]|binom|fact|sqrt|root")  # something to compute: not a plain number or tuple
_MAX_EXPR_CHARS = 100
_MAX_EXPR_BITS = 1024  # no answer has more than ~300 digits; bigger intermediate values are refused
_FUNCTIONS = {"binom": 2, "fact": 1, "sqrt": 1, "root": 2}  # name → arguments


def _integer_expression(s: str) -> int | None:
    """The value of an integer arithmetic expression in LaTeX, or None (not one, inexact, too big)."""
    if len(s) > _MAX_EXPR_CHARS:
        return None
    if "!!" in s or re.search(r"(?<![\\A-Za-z])(?:binom|fact|sqrt|root)", s):
        return None  # a double factorial; a function name written as code
    for latex, op in _EXPR_OPERATORS:
        s = s.replace(latex, op)
    previous = None
    while previous != s:  # from the inside out: `\sqrt{\binom{4}{2} + 3}`, `\frac{10!}{8!}`
        previous = s
        s = _BINOM_RE.sub(r"binom((\1),(\2))", s)
        s = _ROOT_RE.sub(r"root((\2),\1)", s)
        s = _SQRT_RE.sub(lambda m: f"sqrt(({m.group(1) or m.group(2)}))", s)
        s = _FRAC_EXPR_RE.sub(r"((\1)/(\2))", s)
        s = _FACT_RE.sub(r"fact(\1)", s)
    s = _TIMES_CALL_RE.sub(r"\1*", s)
    s = _CLOSE_TIMES_RE.sub(")*", s)
    if not _EXPR_CHARS_RE.fullmatch(s) or not _EXPR_WORK_RE.search(s):
        return None
    try:
        tree = ast.parse(s.replace("{", "(").replace("}", ")").replace("^", "**").strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    return _evaluate(tree.body)


def _log2_factorial(n: int) -> float:
    return math.lgamma(n + 1) / math.log(2)


def _call(name: str, args: list[int]) -> int | None:
    if name == "fact":
        (n,) = args
        if n < 0 or _log2_factorial(n) > _MAX_EXPR_BITS:
            return None
        return math.factorial(n)
    if name == "binom":
        n, k = args
        if n < 0 or not 0 <= k <= n:
            return None  # 0 for k > n is a convention, not an answer a model means
        if _log2_factorial(n) - _log2_factorial(k) - _log2_factorial(n - k) > _MAX_EXPR_BITS:
            return None
        return math.comb(n, k)
    n, k = (args[0], 2) if name == "sqrt" else args
    if n < 0 or not 2 <= k <= 64:
        return None
    r = math.isqrt(n) if k == 2 else round(n ** (1 / k)) if n < 1 << 1000 else None
    for candidate in (r, r + 1, r - 1) if r is not None else ():
        if candidate >= 0 and candidate**k == n:
            return candidate
    return None  # not an exact root


def _evaluate(node: ast.AST) -> int | None:
    if isinstance(node, ast.Constant):
        return node.value if type(node.value) is int else None
    if isinstance(node, ast.Call):
        name = node.func.id if isinstance(node.func, ast.Name) else None
        if name not in _FUNCTIONS or node.keywords or len(node.args) != _FUNCTIONS[name]:
            return None
        args = [_evaluate(a) for a in node.args]
        return None if None in args else _call(name, args)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        if isinstance(node.operand, ast.UnaryOp):  # `--5` is a typo, not an answer
            return None
        value = _evaluate(node.operand)
        return None if value is None else (-value if isinstance(node.op, ast.USub) else value)
    if not isinstance(node, ast.BinOp):
        return None
    left, right = _evaluate(node.left), _evaluate(node.right)
    if left is None or right is None:
        return None
    if isinstance(node.op, ast.Add):
        return left + right
    if isinstance(node.op, ast.Sub):
        return left - right
    if isinstance(node.op, ast.Mult):
        return left * right if left.bit_length() + right.bit_length() <= _MAX_EXPR_BITS else None
    if isinstance(node.op, ast.Div):
        return left // right if right and left % right == 0 else None
    if isinstance(node.op, ast.Pow):
        if right < 0 or (left == 0 and right == 0):
            return None
        if abs(left) > 1 and abs(left).bit_length() * right > _MAX_EXPR_BITS:
            return None
        return left**right
    return None


def parse_integer(s: str | int | None) -> int | None:
    """The integer an answer string denotes, or None when it is not exactly an integer.

    Accepted: `42`, `042`, `+42`, `-5`, `- 5`, `−5` (unicode minus), `1,000`, `1{,}000`, `1\\,000`, `1 000`, `42.0`,
    `42.` (sentence end), `$42$`, `\\(42\\)`, `\\text{42}`, `\\mathbf{42}`, `\\boxed{42}`, `{42}`, `(42)`,
    `x = 42` (the right-hand side, when the left has no comma), `\\frac{84}{2}` / `\\dfrac{84}{2}` / `84/2` (only
    when the division is exact). Units are dropped, as NeMo-Skills' grader does: `42^\\circ`, `42°`, `42\\%`,
    `42\\text{ cm}` → 42 (a degree or percent answer to an integer question is that integer).
    AIMO-2's modulus: `42 \\pmod{1000}`, `2024 \\bmod 1000`, `42 \\mod 1000` → the value reduced by it (42, 24, 42).
    Simple integer expressions are computed: `2^{10}` → 1024, `3 \\times 7` → 21, `\\binom{7}{2}` → 21, `5!` → 120,
    `\\sqrt{49}` → 7 (bounded: `2^{100000}`, `99999!` → None). Also `\\text{42 ways}`, `\\{42\\}`, `(B) 42` → 42
    and a base subscript: `42_{10}` → 42, `101_2` → 5.
    Not integers → None: `3.5`, `\\frac{1}{2}`, `\\sqrt{2}`, `1,2`, `x+1`, words.
    """
    if s is None or isinstance(s, bool):
        return None
    if isinstance(s, int):
        return s
    s = str(s).strip()
    if not s or len(s) > _MAX_ANSWER_CHARS:
        return None
    s = s.replace("\u2212", "-").replace("\u2013", "-").replace("{,}", ",").replace("\\equiv", "=")
    s = s.replace("\\!", "")  # a negative thin space joins: 1,\!024
    if s.startswith(("\\boxed", "\\fbox")) and (spans := _boxed_spans(s)) and spans[0][:2] == (0, len(s)):
        s = spans[0][2].strip()  # a whole box, its content with nested braces: \boxed{\{42\}}
    previous = None
    while previous != s:  # unwrap from the inside out: \boxed{\text{42}} → \boxed{42} → 42
        previous = s
        s = _WRAPPER_RE.sub(r"\1", _TRAILING_UNIT_RE.sub("", _TEXT_WORDS_RE.sub(r"\1", s)))
        s = _SET_RE.sub(r"\1", s.strip())
        s = _CHOICE_RE.sub("", s)
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
    if "mod" in s and (m := _MOD_RE.fullmatch(s)):
        value, modulus = parse_integer(m.group("value")), int(m.group("modulus"))
        return None if value is None or modulus < 1 else value % modulus
    if "_" in s and (m := _BASE_RE.fullmatch(s)):
        base = int(m.group(2))
        try:
            return int(m.group(1), base) if 2 <= base <= 36 else None
        except ValueError:  # a digit the base does not have
            return None

    if m := _INT_RE.fullmatch(s) or _INT_RE.fullmatch(re.sub(r"^([+-]) ", r"\1", s)):
        value = int(re.sub(r"[, ]", "", m.group(2)))
        return -value if m.group(1) == "-" else value
    if m := _FRAC_RE.fullmatch(s):
        sign, num, den = m.group(1), int(m.group(2)), int(m.group(3))
    elif m := _SLASH_RE.fullmatch(s):
        sign, num, den = "", int(m.group(1)), int(m.group(2))
    else:
        return _integer_expression(s)
    if den == 0 or num % den:
        return None
    return -(num // den) if sign == "-" else num // den


# -- the vote of a completion -------------------------------------------------------------------------------------

_TAIL_CHARS = 1000  # an unboxed answer statement must lie in the last this-many characters
# Closing markup a completion may end with after its answer line.
_CLOSING_RE = re.compile(r"(?:\s|</think>|</answer>|<\|im_end\|>|<\|endoftext\|>|<\|eot_id\|>|</s>)+$")
# "The final answer is 42." / "Answer: $42$" / "**Answer:** 42" on the last line of the completion; the last such
# statement on the line counts ("The answer is not 17; the final answer is 19").
_ANSWER_LINE_RE = re.compile(r"\b(?:final\s+answer|answer)\b[\s*_]*(?:is|:|=)[\s*_:]*", re.IGNORECASE)
_VALUE_END_RE = re.compile(r"[\s*_.!]*$")
# "Final answer: the number of ways is 120": words without a number, then the value.
_WORDS_THEN_VALUE_RE = re.compile(r"[A-Za-z][A-Za-z' -]*?\s(?:is|are|equals|=)\s+(?P<value>[^A-Za-z].*)",
                                  re.IGNORECASE)
# Closing courtesies after the answer line carry no answer: "I hope this helps!", "Let me know if ...".
_COURTESY_RE = re.compile(
    r"[\W_]*(?:i\s+)?(?:hope\s+(?:this|that|it)\s+helps|let\s+me\s+know|feel\s+free|happy\s+to\s+help|good\s+luck"
    r"|thanks?\b|thank\s+you|cheers|glad\s+to\s+help)[^\d]*", re.IGNORECASE)
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
    while lines and _COURTESY_RE.fullmatch(lines[-1]):
        lines.pop()
    if not lines:
        return None
    if statements := list(_ANSWER_LINE_RE.finditer(lines[-1])):
        value = lines[-1][statements[-1].end():]
        value = value[:_VALUE_END_RE.search(value).start()]
        if parse_integer(value) is None and (m := _WORDS_THEN_VALUE_RE.fullmatch(value)):
            return m.group("value")
        return value or None
    if len(lines) >= 2 and (m := _ANSWER_HEADING_RE.search("\n".join(lines[-2:]))):
        return m.group("value")
    return None


# A box that holds no answer: `\boxed{}`, `\boxed{\text{}}`, `\boxed{?}`, `\boxed{\ldots}`, `\boxed{answer}` (the model
# echoing the instruction). It must not erase an earlier answer; a box that holds a non-integer (`\frac{1}{2}`) does.
_COMMAND_RE = re.compile(r"\\[A-Za-z]+")
_PLACEHOLDER_RE = re.compile(r"(?:(?:final|your|the)\s+)?answer(?:\s+here)?", re.IGNORECASE)


def _holds_no_answer(content: str) -> bool:
    rest = _COMMAND_RE.sub("", content)
    if not any(c.isalnum() for c in rest):
        return True
    return bool(_PLACEHOLDER_RE.fullmatch(re.sub(r"[^A-Za-z ]", "", rest).strip()))


def extract_answer(text: str, spec: AnswerSpec | None = None) -> int | None:
    """The vote of a completion: the model's final answer as an integer, or None (an invalid vote).

    The final answer is, in order: the last \\boxed{} after the first `</think>` (what the model concluded, even
    if a box inside its thinking said otherwise); else an answer stated on the last line after `</think>` ("The
    final answer is 42"); else the last \\boxed{} anywhere; else an answer stated on the last line(s). Boxes that
    hold no answer (`\\boxed{}`, `\\boxed{?}`) are skipped; a box holding a non-integer makes the vote None. With a
    spec, the integer is reduced by spec.modulus (if set) and must lie in [spec.min, spec.max]. No sympy: this runs
    on every sample."""
    if not text:
        return None
    boxes = [(start, content) for start, _, content in _boxed_spans(text) if not _holds_no_answer(content)]
    close = text.find("</think>")
    answer = None
    if close >= 0:
        final_boxes = [content for start, content in boxes if start > close]
        answer = final_boxes[-1] if final_boxes else _unboxed_answer(text[close + len("</think>"):])
    if answer is None:
        answer = boxes[-1][1] if boxes else _unboxed_answer(text)
    value = parse_integer(answer)
    if value is None or spec is None:
        return value
    return spec.apply(value)


ANSWER_SCAN_CHARS = 1 << 19  # ~130k tokens: longer than any sample a 128k context holds


def extract_final_answer(text: str, spec: AnswerSpec | None = None) -> int | None:
    """extract_answer on the last ANSWER_SCAN_CHARS characters of text (all of any real sample): what the server
    votes with, so that no sample, however long, holds the interpreter for long (a final answer is at the end)."""
    return extract_answer(text[-ANSWER_SCAN_CHARS:] if len(text) > ANSWER_SCAN_CHARS else text, spec)


def __getattr__(name: str):
    """`grade` and `is_equivalent` moved to inference.grading; the old import path still works."""
    if name in ("grade", "is_equivalent"):
        from inference import grading

        return getattr(grading, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
