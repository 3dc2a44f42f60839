"""Grade answers against gold answers, for GRPO rewards and evaluation: integers exactly as the server votes
(inference/answers.py), everything else with math-verify.

- `is_equivalent`: an answer string against a gold string: integers compared as integers, word answers literally,
  everything else with math-verify (thread-safe settings).
- `grade`: a completion against a gold string; None = "the gold gives no signal".
"""

from __future__ import annotations

import re

from inference.answers import (
    _DEGREES_RE,
    _MAX_ANSWER_CHARS,
    _NOISE_RE,
    _WRAPPER_RE,
    AnswerSpec,
    extract_answer,
    last_boxed,
    parse_integer,
)

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
