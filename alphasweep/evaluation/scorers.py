"""Answer extraction and scoring: math (via math-verify), multiple choice, exact match, string similarity.

Each scorer kind has an `extract_<kind>(completion) -> str | None` (what the records show as
"extracted") and a `<kind>_correct(completion, gold) -> bool`. `METRICS` lists every metric a kind reports
per completion (the first is its correctness, which accuracy and pass@k count; `exact_similarity` adds a
Jaro-Winkler similarity); `SCORERS` and `EXTRACTORS` map the kind names used by `BenchmarkSpec.scorer` to
the correctness and the extractor. Nothing here raises on odd model output: a completion that cannot be
read is simply wrong.

math-verify guards its parsing and comparison with `signal.alarm`, which only works in the main thread;
elsewhere (a threaded Ray actor, a thread pool) the timeouts are switched off rather than crashing.
"""

from __future__ import annotations

import functools
import logging
import re
import threading

from rapidfuzz.distance import JaroWinkler

__all__ = [
    "EXTRACTORS",
    "METRICS",
    "SCORERS",
    "choice_correct",
    "exact_correct",
    "extract_boxed",
    "extract_choice",
    "extract_exact",
    "extract_math",
    "math_correct",
    "normalize_exact",
    "normalize_math_gold",
    "OPTION_LETTERS",
    "similarity",
]

MATH_TIMEOUT_S = 5  # per parse / per comparison, main thread only

# math-verify logs a warning whenever a timeout is disabled or hit; those are expected here.
logging.getLogger("math_verify").setLevel(logging.ERROR)


# ---------------------------------------------------------------- math


def _matching_brace(text: str, open_at: int) -> int | None:
    """Index of the `}` that closes the `{` at `open_at` (backslash-escaped braces skipped)."""
    depth = 0
    i = open_at
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text) and text[i + 1] in "{}":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


_BOXED = re.compile(r"\\(?:boxed|fbox|framebox)(?![A-Za-z])\s*")


def extract_boxed(text: str) -> str | None:
    r"""Content of the last `\boxed{...}` (balanced braces), or of `\boxed 5` (up to whitespace or `$`)."""
    for m in reversed(list(_BOXED.finditer(text))):
        start = m.end()
        if text[start : start + 1] == "{":
            end = _matching_brace(text, start)
            if end is not None:
                return text[start + 1 : end].strip()
            continue  # unbalanced: try an earlier one
        token = re.match(r"[^\s$]+", text[start:])
        if token:
            return token.group(0).rstrip(".,;").strip() or None
    return None


def _strip_answer(text: str) -> str:
    """Tidy the text after `####` / `answer is`: its first line, trailing punctuation and `$` wrappers."""
    text = text.strip().split("\n", 1)[0].strip()
    text = text.lstrip(":").strip()
    # a sentence end: "46." / "46. Next ..." — but keep decimals like 3.5
    text = re.split(r"(?<!\d)\.(?:\s|$)|\.\s", text, maxsplit=1)[0].strip()
    text = text.rstrip(".,;!").strip()
    if text.startswith("$") and text.endswith("$") and len(text) > 1:
        text = text.strip("$").strip()
    return text


def extract_math(completion: str) -> str | None:
    r"""The final answer of a math completion.

    The last `\boxed{...}`, else the text after the last `####`, else after the last "answer is"
    (case-insensitive); None when there is none of them.
    """
    if not completion:
        return None
    boxed = extract_boxed(completion)
    if boxed is not None:
        return boxed
    if "####" in completion:
        answer = _strip_answer(completion.rsplit("####", 1)[1])
        return answer or None
    m = list(re.finditer(r"answer\s+is\s*:?", completion, flags=re.IGNORECASE))
    if m:
        answer = _strip_answer(completion[m[-1].end() :])
        return answer or None
    return None


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def normalize_math_gold(gold) -> str:
    """A gold answer as text: they come as strings, ints or floats (`27.0` in AMC files means 27)."""
    if isinstance(gold, float) and gold.is_integer():
        return str(int(gold))
    gold = str(gold).strip()
    if re.fullmatch(r"-?\d+\.0+", gold):
        gold = gold.split(".")[0]
    return gold


def _plain(text: str) -> str:
    """A light canonical form for the string fast path (no maths: spacing, `$`, thousands commas)."""
    text = text.strip().strip("$").strip()
    text = re.sub(r"\\[,;!: ]|\s+", "", text)
    text = text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", text):
        text = text.replace(",", "")
    return text


@functools.lru_cache(maxsize=4096)
def _parse_cached(latex: str, timeout: int | None):
    return tuple(_parse(latex, timeout))


def _parse(latex: str, timeout: int | None) -> list:
    from math_verify import parse  # sympy (~2 s to import): loaded on the first answer that needs it

    try:
        return parse(latex, parsing_timeout=timeout)
    except Exception:  # noqa: BLE001 — math-verify can raise on pathological input
        return []


def _wrap(answer: str) -> str:
    """As math-verify expects an answer: inside `$...$` (already-delimited text is kept)."""
    answer = answer.strip()
    if answer.startswith("$") or answer.startswith("\\("):
        return answer
    return f"${answer}$"


def math_correct(completion: str, answer) -> bool:
    r"""Whether the completion's final answer is mathematically equal to the gold `answer`.

    The final answer is `extract_math(completion)` (last `\boxed{}`, else after `####`, else after
    "answer is"); equality is decided by math-verify (`parse` + `verify`), after a plain string check.
    Timeouts and parser errors count as wrong.
    """
    try:
        predicted = extract_math(completion)
        if predicted is None:
            return False
        gold = normalize_math_gold(answer)
        if not gold:
            return False
        if _plain(predicted) == _plain(gold):
            return True
        from math_verify import verify  # as `parse`: only when the string check cannot decide

        timeout = MATH_TIMEOUT_S if _in_main_thread() else None
        gold_parsed = list(_parse_cached(_wrap(gold), timeout))
        pred_parsed = _parse(_wrap(predicted), timeout)
        if not gold_parsed or not pred_parsed:
            return False
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout))
    except Exception:  # noqa: BLE001 — including math-verify's TimeoutException: wrong, never a crash
        return False


# ---------------------------------------------------------------- multiple choice

OPTION_LETTERS = "ABCDEFGHIJ"  # the letters of multiple-choice options, in order
_LETTER = f"([{OPTION_LETTERS}])"
_CHOICE_PATTERNS = [
    # "the answer is (C)", "Answer: C", "answer is: C.", "correct option is C"
    re.compile(r"(?i:answer|option|choice)\s*(?i:is)?\s*:?\s*\(?\**\s*" + _LETTER + r"\b"),
    # "\boxed{C}", "\boxed{C. Aspirin}", "\boxed{\text{C}}"
    re.compile(r"\\boxed\{\s*(?:\\text\{\s*)?\(?" + _LETTER + r"\)?(?=[\s.:)}]|$)"),
    re.compile(r"\(" + _LETTER + r"\)"),
]


def extract_choice(completion: str) -> str | None:
    """The chosen option letter: 'answer is (C)' / 'Answer: C' / '\\boxed{C}' (last such), else the last
    '(C)', else a completion that starts with the letter ('C', 'C.', 'C) ...')."""
    if not completion:
        return None
    for pattern in _CHOICE_PATTERNS:
        found = pattern.findall(completion)
        found = [f.upper() for f in found if f.upper() in OPTION_LETTERS]
        if found:
            return found[-1]
    m = re.match(r"\s*\**\(?" + _LETTER + r"(?:[\).:,]|\s*$)", completion)
    if m:
        return m.group(1)
    return None


def _gold_letter(gold) -> str:
    gold = str(gold).strip().strip("()").strip().rstrip(".").upper()
    return gold[:1] if gold[:1] in OPTION_LETTERS and (len(gold) == 1 or not gold[1].isalpha()) else gold


def choice_correct(completion: str, answer) -> bool:
    """Whether the extracted option letter equals the gold letter (`answer` like 'C' or '(C)')."""
    predicted = extract_choice(completion)
    return predicted is not None and predicted == _gold_letter(answer)


# ---------------------------------------------------------------- exact match


def normalize_exact(text) -> str:
    """Strip, collapse whitespace, case-fold and drop a trailing period."""
    text = re.sub(r"\s+", " ", str(text)).strip().casefold()
    while text.endswith("."):
        text = text[:-1].rstrip()
    return text


def extract_exact(completion: str) -> str:
    """The normalised completion."""
    return normalize_exact(completion or "")


def exact_correct(completion: str, answer) -> bool:
    """Exact match after `normalize_exact`. When the gold answer is one line, the completion's first
    non-empty line must match (a model that answers and then keeps talking is judged on its answer)."""
    gold = normalize_exact(answer)
    if extract_exact(completion) == gold:
        return True
    if "\n" not in str(answer).strip():
        lines = [line for line in (completion or "").splitlines() if line.strip()]
        return bool(lines) and normalize_exact(lines[0]) == gold
    return False


def similarity(completion: str, answer) -> float:
    """Jaro-Winkler similarity (rapidfuzz; prefix weight 0.1, prefix up to 4) of the answer line and the gold,
    both stripped and lower-cased, as the paper scores its figlet-font answers. The answer line is the
    completion's first non-empty line, as `exact_correct` judges a one-line gold."""
    lines = [line for line in (completion or "").splitlines() if line.strip()]
    predicted = lines[0].strip().lower() if lines else ""
    return float(JaroWinkler.similarity(predicted, str(answer).strip().lower()))


# Every metric of a scorer kind, per completion. The first is the kind's correctness (True/False), which
# accuracy and pass@k count; `BenchmarkSpec.metric` names the one a benchmark's score follows.
METRICS = {
    "math": {"accuracy": math_correct},
    "choice": {"accuracy": choice_correct},
    "exact": {"accuracy": exact_correct},
    "exact_similarity": {"exact_match": exact_correct, "similarity": similarity},
}
SCORERS = {kind: next(iter(metrics.values())) for kind, metrics in METRICS.items()}
EXTRACTORS = {"math": extract_math, "choice": extract_choice, "exact": extract_exact,
              "exact_similarity": extract_exact}
