"""Benchmark registry: where a benchmark's rows come from, how a row becomes a prompt, what the gold is.

A `BenchmarkSpec` names either a built-in benchmark (`BUILTIN_BENCHMARKS`: rows from the hub unless
`path` points at a local copy) or the user's own file with a `format` (or a `scorer`). Formats fix the
default fields, the scorer and the prompt (field names may be dotted paths into nested columns):

| format  | prompt field          | gold                              | scorer |
|---------|-----------------------|-----------------------------------|--------|
| gsm8k   | question              | text after `####` in answer       | math   |
| math    | problem (or question) | answer                            | math   |
| math500, aime24, amc23: as `math` (amc23 golds like `27.0` mean 27)                   |
| minerva_math | question (or problem) | answer                       | math   |
| olympiadbench | question         | final_answer[0] without `$`       | math   |
| choice  | question + options    | answer (a letter, or an option's text) | choice |
| medqa   | question + options    | answer_idx                        | choice |
| medmcqa | question + opa..opd   | cop (0-3)                         | choice |
| pubmedqa | context + question, options yes/no/maybe | final_decision  | choice |
| exact   | prompt                | answer                            | exact  |
| figfont | extra_info.question (or question) | answer                | exact_similarity |

The paper's benchmarks (arXiv 2510.00526): math (MATH-500, Minerva-Math, OlympiadBench, AIME24, AMC23),
medical multiple choice (MedMCQA, MedQA, PubMedQA, MMLU-Pro's medical subset: its health and biology
questions, 818 + 717 = 1535 as in the m1 / HuatuoGPT-o1 evaluation data) and figlet-font puzzles
(reasoning-gym's `figlet_font`: exact match and Jaro-Winkler similarity).

Prompt rule. The row becomes a *message*: `spec.template.format(**row)` when a template is given, else
the format's default (math: the problem plus "put your final answer within \\boxed{}"; choice: the
question and lettered options; exact: the prompt field verbatim). The message is then wrapped in the
tokenizer's chat template when `use_chat_template` resolves to true and the tokenizer has one.
`use_chat_template: null` (the default) means true for math/choice and false for exact: exact-match
tasks (puzzles, the synthetic tasks) are trained as raw `prompt + completion` text, so their prompt
must be the raw text too. Without a chat template, math/choice messages are rendered as
"Question: ...\\nAnswer:" (a spec's own template is used as it is).

A model's prompt format (`BenchmarkSpec.prompt_template`, set per model in a sweep) replaces both: the
*bare* question (math: the problem; choice: the question and its lettered options, one per line; exact:
the prompt; or `spec.template`'s text) goes into its `{prompt}`, and the result is the prompt, as the
paper's per-model prompt strings are. The format's instruction is then the template's business.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from alphasweep.config import BenchmarkSpec
from alphasweep.evaluation.scorers import METRICS, OPTION_LETTERS, normalize_math_gold
from alphasweep.rows import MISSING, DataError, Row, field_value, found, load_rows, looks_local, read_local

__all__ = [
    "BUILTIN_BENCHMARKS",
    "FORMATS",
    "Benchmark",
    "BenchmarkItem",
    "Builtin",
    "Format",
    "benchmark_from_string",
    "known_benchmarks",
    "benchmark_format",
    "benchmark_source",
    "kept_rows",
    "load_benchmark",
    "metric_names",
    "render_prompt",
    "resolve_spec",
    "row_item",
]

MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
CHOICE_INSTRUCTION = "Answer with the letter of the correct option."


# ---------------------------------------------------------------- formats


def _gold_after_hashes(value: Any) -> str:
    text = str(value)
    return text.rsplit("####", 1)[1].strip().replace(",", "") if "####" in text else text.strip()


def _gold_text(value: Any) -> str:
    return str(value).strip()


def _text(row: dict, name: str) -> str:
    return str(field_value(row, name))


def _options(row: dict) -> list[tuple[str, str]]:
    """(letter, text) pairs from `options` / `choices`: a list (lettered A, B, ...) or a dict of letters."""
    raw = row.get("options", row.get("choices"))
    if isinstance(raw, dict):  # letters another row has but this one lacks are None (a table has one schema)
        return [(str(k).strip().upper(), str(v)) for k, v in sorted(raw.items()) if v is not None]
    if isinstance(raw, (list, tuple)):
        if len(raw) > len(OPTION_LETTERS):
            raise ValueError(f"{len(raw)} options; at most {len(OPTION_LETTERS)} are supported")
        return [(OPTION_LETTERS[i], str(v)) for i, v in enumerate(raw)]
    raise ValueError("field 'options': expected a list or a dict of lettered options")


def _math_message(row: dict, prompt_field: str) -> str:
    return f"{_text(row, prompt_field)}\n{MATH_INSTRUCTION}"


def _choice_message(row: dict, prompt_field: str, options=_options) -> str:
    listed = "\n".join(f"{letter}. {text}" for letter, text in options(row))
    return f"{_text(row, prompt_field)}\n\n{listed}\n\n{CHOICE_INSTRUCTION}"


def _choice_bare(row: dict, prompt_field: str, options=_options) -> str:
    """The question and its options, one `X. text` per line (the m1 / m23k layout the paper trains on)."""
    listed = "\n".join(f"{letter}. {text}" for letter, text in options(row))
    return f"{_text(row, prompt_field)}\n{listed}"


def _exact_message(row: dict, prompt_field: str) -> str:
    return _text(row, prompt_field)


def _choice_gold(value: Any, row: dict) -> str:
    """A letter: the answer field is a letter ('C', '(C)') or the text of one of the options."""
    text = str(value).strip()
    bare = text.strip("()").strip().rstrip(".")
    if len(bare) == 1 and bare.upper() in OPTION_LETTERS:
        return bare.upper()
    if isinstance(value, int) and not isinstance(value, bool):
        return OPTION_LETTERS[value]
    for letter, option in _options(row):
        if option.strip() == text:
            return letter
    raise ValueError(f"answer {text[:40]!r} is neither an option letter nor an option's text")


def _medmcqa_options(row: dict) -> list[tuple[str, str]]:
    options = []
    for letter, key in zip("ABCD", ("opa", "opb", "opc", "opd"), strict=True):
        if field_value(row, key) in (MISSING, None):
            raise ValueError(f"missing field {key!r}")
        options.append((letter, _text(row, key)))
    return options


def _medmcqa_gold(value: Any, row: dict) -> str:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 3:
        raise ValueError(f"field 'cop': expected an option index 0-3, got {value!r}")
    return "ABCD"[value]


def _pubmedqa_options(row: dict) -> list[tuple[str, str]]:
    return [("A", "yes"), ("B", "no"), ("C", "maybe")]


def _pubmedqa_row(row: dict, prompt_field: str) -> dict:
    """The row with its abstract (`context.contexts`) put in front of the question."""
    passages = field_value(row, "context.contexts")
    if not isinstance(passages, list):
        raise ValueError("field 'context.contexts': expected the abstract's passages")
    return {**row, prompt_field: f"Context: {' '.join(map(str, passages))}\nQuestion: {_text(row, prompt_field)}"}


def _pubmedqa_message(row: dict, prompt_field: str) -> str:
    return _choice_message(_pubmedqa_row(row, prompt_field), prompt_field, _pubmedqa_options)


def _pubmedqa_bare(row: dict, prompt_field: str) -> str:
    return _choice_bare(_pubmedqa_row(row, prompt_field), prompt_field, _pubmedqa_options)


def _pubmedqa_gold(value: Any, row: dict) -> str:
    for letter, decision in _pubmedqa_options(row):
        if str(value).strip().lower() == decision:
            return letter
    raise ValueError(f"field 'final_decision': expected yes, no or maybe, got {value!r}")


def _olympiad_gold(value: Any, row: dict) -> str:
    """OlympiadBench keeps its answers in a list of LaTeX strings (`["$2$"]`); the first is the answer."""
    if not isinstance(value, list) or not value:
        raise ValueError(f"field 'final_answer': expected a non-empty list, got {value!r}")
    return str(value[0]).strip().strip("$").strip()


@dataclass(frozen=True)
class Format:
    """How rows of one shape become (message, gold) pairs and which scorer reads the completions."""

    name: str
    prompt_fields: tuple[str, ...]  # the first one present in a row is used
    answer_field: str
    scorer: str
    message: Callable[[dict, str], str]
    gold: Callable[[Any, dict], str]
    chat_by_default: bool
    bare: Callable[[dict, str], str] | None = None  # the question a model's prompt template wraps; None: message


FORMATS: dict[str, Format] = {
    "gsm8k": Format("gsm8k", ("question",), "answer", "math", _math_message,
                    lambda v, r: _gold_after_hashes(v), True, bare=_exact_message),
    "math": Format("math", ("problem", "question"), "answer", "math", _math_message,
                   lambda v, r: normalize_math_gold(v), True, bare=_exact_message),
    "choice": Format("choice", ("question",), "answer", "choice", _choice_message, _choice_gold, True,
                     bare=_choice_bare),
    "exact": Format("exact", ("prompt",), "answer", "exact", _exact_message, lambda v, r: _gold_text(v), False),
}
for _alias in ("math500", "aime24", "amc23"):
    FORMATS[_alias] = FORMATS["math"]
FORMATS.update({
    "minerva_math": Format("minerva_math", ("question", "problem"), "answer", "math", _math_message,
                           lambda v, r: normalize_math_gold(v), True, bare=_exact_message),
    "olympiadbench": Format("olympiadbench", ("question",), "final_answer", "math", _math_message, _olympiad_gold,
                            True, bare=_exact_message),
    "medqa": Format("medqa", ("question",), "answer_idx", "choice", _choice_message, _choice_gold, True,
                    bare=_choice_bare),
    "medmcqa": Format("medmcqa", ("question",), "cop", "choice", partial(_choice_message, options=_medmcqa_options),
                      _medmcqa_gold, True, bare=partial(_choice_bare, options=_medmcqa_options)),
    "pubmedqa": Format("pubmedqa", ("question",), "final_decision", "choice", _pubmedqa_message, _pubmedqa_gold, True,
                       bare=_pubmedqa_bare),
    "figfont": Format("figfont", ("extra_info.question", "question"), "answer", "exact_similarity", _exact_message,
                      lambda v, r: _gold_text(v), False),
})
_SCORER_FORMAT = {"math": "math", "choice": "choice", "exact": "exact", "exact_similarity": "exact"}


@dataclass(frozen=True)
class Builtin:
    """A named benchmark: its hub dataset (used when the spec gives no path), its format, and which of the
    dataset's rows belong to it (`keep`, applied to a local copy as well)."""

    name: str
    hub: str
    subset: str | None
    split: str
    format: str
    keep: Callable[[dict], bool] | None = None


def _mmlu_pro_medical(row: dict) -> bool:
    return row.get("category") in ("health", "biology")


BUILTIN_BENCHMARKS: dict[str, Builtin] = {
    "gsm8k": Builtin("gsm8k", "openai/gsm8k", "main", "test", "gsm8k"),
    "math500": Builtin("math500", "HuggingFaceH4/MATH-500", None, "test", "math500"),
    "aime24": Builtin("aime24", "HuggingFaceH4/aime_2024", None, "train", "aime24"),
    "amc23": Builtin("amc23", "math-ai/amc23", None, "test", "amc23"),
    "minerva_math": Builtin("minerva_math", "math-ai/minervamath", None, "test", "minerva_math"),
    "olympiadbench": Builtin("olympiadbench", "Hothan/OlympiadBench", "OE_TO_maths_en_COMP", "train", "olympiadbench"),
    "medmcqa": Builtin("medmcqa", "openlifescienceai/medmcqa", None, "validation", "medmcqa"),
    "medqa": Builtin("medqa", "GBaker/MedQA-USMLE-4-options", None, "test", "medqa"),
    "pubmedqa": Builtin("pubmedqa", "qiaojin/PubMedQA", "pqa_labeled", "train", "pubmedqa"),
    "mmlu_pro_medical": Builtin("mmlu_pro_medical", "TIGER-Lab/MMLU-Pro", None, "test", "choice", _mmlu_pro_medical),
    "figfont": Builtin("figfont", "gaotang/figlet_font", None, "test", "figfont"),
}


def known_benchmarks() -> list[str]:
    return list(BUILTIN_BENCHMARKS)


# ---------------------------------------------------------------- specs


def resolve_spec(spec: BenchmarkSpec | dict | str) -> BenchmarkSpec:
    """A validated spec from a spec, a dict, or a string (see `benchmark_from_string`); raises ValueError
    for an unknown name without a path and for a user's file that says neither format nor scorer."""
    if isinstance(spec, str):
        spec = benchmark_from_string(spec)
    elif isinstance(spec, dict):
        spec = BenchmarkSpec.model_validate(spec)
    elif not isinstance(spec, BenchmarkSpec):
        raise TypeError(f"expected a BenchmarkSpec, a dict or a name, got {type(spec).__name__}")
    if spec.format is not None and spec.format not in FORMATS:
        raise ValueError(f"benchmark {spec.name!r}: unknown format {spec.format!r}; "
                         f"expected one of {', '.join(FORMATS)}")
    if spec.name not in BUILTIN_BENCHMARKS:
        if not spec.path:
            raise ValueError(f"unknown benchmark {spec.name!r}; built-in benchmarks are "
                             f"{', '.join(known_benchmarks())} (or give `path` and `format` for your own data)")
        if spec.format is None and spec.scorer is None:
            raise ValueError(f"benchmark {spec.name!r}: a benchmark that is not built in needs `format` "
                             f"({', '.join(FORMATS)}) or `scorer` ({', '.join(METRICS)})")
    metrics = METRICS[_format_of(spec).scorer if spec.scorer is None else spec.scorer]
    if spec.metric is not None and spec.metric not in metrics:
        raise ValueError(f"benchmark {spec.name!r}: unknown metric {spec.metric!r}; its scorer reports "
                         f"{', '.join(metrics)}")
    return spec


def _format_of(spec: BenchmarkSpec) -> Format:
    builtin = BUILTIN_BENCHMARKS.get(spec.name)
    return FORMATS[spec.format or (builtin.format if builtin else _SCORER_FORMAT[spec.scorer])]


def metric_names(spec: BenchmarkSpec) -> list[str]:
    """The metrics a (resolved) spec's scorer reports; its score follows `spec.metric`, else the first."""
    return list(METRICS[spec.scorer or _format_of(spec).scorer])


def _infer_format(path: Path) -> str | None:
    """The format of a local file from its folder/stem name or its first row's fields."""
    for name in (path.parent.name, path.stem):
        if name in BUILTIN_BENCHMARKS:
            return BUILTIN_BENCHMARKS[name].format
    try:
        row = read_local(path, limit=1)[0].value
    except (DataError, OSError):  # the real load reports the problem
        return None
    if not isinstance(row, dict):
        return None
    if "options" in row or "choices" in row:
        return "choice"
    if "prompt" in row and "answer" in row:
        return "exact"
    if "question" in row and "####" in str(row.get("answer", "")):
        return "gsm8k"
    if ("problem" in row or "question" in row) and "answer" in row:
        return "math"
    return None


def benchmark_from_string(text: str) -> BenchmarkSpec:
    """`gsm8k` (a built-in), `NAME=PATH`, or a local `PATH` (the name is the folder or file stem, the
    format is inferred from the name or the first row's fields). Used by the CLI's `--benchmarks`."""
    text = text.strip()
    name, sep, path = text.partition("=")
    if sep:
        name, path = name.strip(), path.strip()
    elif text in BUILTIN_BENCHMARKS or not (Path(text).expanduser().exists() or "/" in text or "." in text):
        return BenchmarkSpec(name=text)
    else:
        path = text
        p = Path(path).expanduser()
        name = p.parent.name if p.stem in ("test", "train", "validation", "dev") and p.parent.name else p.stem
    if not name:
        raise ValueError(f"benchmark {text!r}: expected NAME, NAME=PATH or PATH")
    p = Path(path).expanduser()
    if looks_local(path) and not p.exists():
        raise FileNotFoundError(f"benchmark file not found: {path}")
    fmt = None
    if name not in BUILTIN_BENCHMARKS and p.is_file():
        fmt = _infer_format(p)
        if fmt is None:
            raise ValueError(f"benchmark {text!r}: cannot tell its format from the rows; use a config with "
                             f"`format` ({', '.join(FORMATS)})")
    return BenchmarkSpec(name=name, path=path, format=fmt)


# ---------------------------------------------------------------- benchmarks


@dataclass(frozen=True)
class BenchmarkItem:
    index: int  # row number in the source
    message: str  # the prompt before any chat template
    gold: str


@dataclass
class Benchmark:
    name: str
    scorer: str
    use_chat_template: bool  # wrap in the tokenizer's chat template (when it has one)
    templated: bool = False  # messages come from the spec's own template (never re-wrapped as plain Q/A)
    items: list[BenchmarkItem] = field(default_factory=list)
    source: str = ""
    metric: str = "accuracy"  # which of the scorer's METRICS the benchmark's score follows

    def prompts(self, tokenizer) -> list[str]:
        return [render_prompt(it.message, tokenizer, self.use_chat_template, plain_qa=not self.templated)
                for it in self.items]


def _pick_field(row: dict, candidates: Iterable[str]) -> str:
    for name in candidates:
        if field_value(row, name) not in (MISSING, None):
            return name
    raise ValueError(f"missing field {' / '.join(repr(c) for c in candidates)} "
                     f"(the row has {', '.join(map(repr, row)) or 'no fields'})")


def benchmark_format(spec: BenchmarkSpec) -> tuple[Format, str]:
    """The format of a resolved spec's rows and the name of its scorer."""
    fmt = _format_of(spec)
    return fmt, spec.scorer or fmt.scorer


def row_item(spec: BenchmarkSpec, fmt: Format, row: Any) -> tuple[str, str]:
    """One row's (message, gold); a ValueError names the field that is missing or wrong."""
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, found {found(row)}")
    if spec.template:
        try:
            message = spec.template.format(**row)
        except (KeyError, IndexError) as e:
            raise ValueError(f"template refers to a missing field {e}") from None
    else:
        compose = (fmt.bare or fmt.message) if spec.prompt_template else fmt.message
        message = compose(row, _pick_field(row, (spec.prompt_field,) if spec.prompt_field else fmt.prompt_fields))
    if spec.prompt_template:
        message = spec.prompt_template.format(prompt=message)
    answer_field = spec.answer_field or fmt.answer_field
    answer = field_value(row, answer_field)
    if answer is MISSING:
        raise ValueError(f"missing field {answer_field!r} (the row has {', '.join(map(repr, row)) or 'no fields'})")
    if answer is None:
        raise ValueError(f"field {answer_field!r}: expected an answer, found null")
    return message, fmt.gold(answer, row)


def kept_rows(spec: BenchmarkSpec, rows: list[Row]) -> list[Row]:
    """The rows that belong to the benchmark: a built-in may keep only part of its dataset (`Builtin.keep`)."""
    builtin = BUILTIN_BENCHMARKS.get(spec.name)
    if not (builtin and builtin.keep):
        return rows
    return [r for r in rows if isinstance(r.value, dict) and builtin.keep(r.value)]


def benchmark_source(spec: BenchmarkSpec) -> tuple[str, str, str | None]:
    """Where a resolved spec's rows come from: (path or hub id, split, subset)."""
    if spec.path:
        return spec.path, spec.split, spec.subset
    builtin = BUILTIN_BENCHMARKS[spec.name]
    split = spec.split if "split" in spec.model_fields_set else builtin.split
    subset = spec.subset if "subset" in spec.model_fields_set else builtin.subset
    return builtin.hub, split, subset


def load_benchmark(spec: BenchmarkSpec | dict | str, limit: int | None = None) -> Benchmark:
    """Resolve the spec, read its rows (the first `limit`, or `spec.limit`, whichever is smaller) and
    turn them into (message, gold) items. Row problems raise ValueError naming the source, line, field."""
    spec = resolve_spec(spec)
    fmt, scorer = benchmark_format(spec)
    source, split, subset = benchmark_source(spec)
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    rows = kept_rows(spec, load_rows(source, split=split, subset=subset, what="benchmark"))
    if not rows:
        raise ValueError(f"benchmark {spec.name!r} ({source}): no rows of this benchmark")
    caps = [c for c in (limit, spec.limit) if c is not None]
    if caps:
        rows = rows[: min(caps)]
    items = []
    for i, (where, row) in enumerate(rows):
        try:
            message, gold = row_item(spec, fmt, row)
        except ValueError as e:
            raise ValueError(f"benchmark {spec.name!r} ({source}): {where}: {e}") from None
        items.append(BenchmarkItem(index=i, message=message, gold=gold))
    use_chat = fmt.chat_by_default if spec.use_chat_template is None else spec.use_chat_template
    if spec.prompt_template:  # the model's own prompt format: the message is the prompt
        use_chat = False
    return Benchmark(name=spec.name, scorer=scorer, use_chat_template=use_chat,
                     templated=bool(spec.template or spec.prompt_template), items=items, source=source,
                     metric=spec.metric or metric_names(spec)[0])


def render_prompt(message: str, tokenizer, use_chat_template: bool, *, plain_qa: bool = True) -> str:
    """The text fed to the model (see the module docstring for the rule)."""
    if use_chat_template and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": message}], tokenize=False,
                                             add_generation_prompt=True)
    if use_chat_template and plain_qa:  # a chat-style format, but a base model without a template
        return f"Question: {message}\nAnswer:"
    return message
