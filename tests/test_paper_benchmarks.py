"""The paper's benchmarks as built-ins: each loader on rows written here in its hub dataset's own columns
(parquet, as the hub serves them), the gold it reads, its prompt with and without a model's template, and
the metrics a benchmark reports and optimises."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from alphasweep.config import BenchmarkSpec
from alphasweep.evaluation.actor import Evaluator
from alphasweep.evaluation.benchmarks import (
    BUILTIN_BENCHMARKS,
    CHOICE_INSTRUCTION,
    MATH_INSTRUCTION,
    load_benchmark,
    resolve_spec,
)
from alphasweep.evaluation.runner import format_table
from alphasweep.evaluation.scorers import METRICS, SCORERS, similarity

MINERVA = [  # math-ai/minervamath, split test
    {"question": "Find the diameter of the image (in cm).", "answer": "1.6"},
    {"question": "What is the escape velocity, in km/s?", "answer": "11.2"},
]
OLYMPIAD = [  # Hothan/OlympiadBench, subset OE_TO_maths_en_COMP, split train
    {"id": 1606, "subfield": "Combinatorics", "context": None, "question": "How many moves does Sergey need?",
     "solution": ["Two moves suffice."], "final_answer": ["$2$"], "is_multiple_answer": False, "unit": None,
     "answer_type": "Numerical", "error": None},
    {"id": 1607, "subfield": "Algebra", "context": None, "question": "Find the smallest $n$.",
     "solution": ["..."], "final_answer": ["$\\frac{1}{2}$"], "is_multiple_answer": False, "unit": None,
     "answer_type": "Expression", "error": None},
]
MEDMCQA = [  # openlifescienceai/medmcqa, split validation
    {"id": "a1", "question": "Which nerve supplies the deltoid?", "opa": "Radial", "opb": "Axillary",
     "opc": "Ulnar", "opd": "Median", "cop": 1, "choice_type": "single", "exp": "C5-C6.",
     "subject_name": "Anatomy", "topic_name": "Upper limb"},
    {"id": "a2", "question": "Drug of choice for absence seizures?", "opa": "Phenytoin", "opb": "Carbamazepine",
     "opc": "Ethosuximide", "opd": "Phenobarbital", "cop": 2, "choice_type": "single", "exp": None,
     "subject_name": "Pharmacology", "topic_name": None},
]
MEDQA = [  # GBaker/MedQA-USMLE-4-options, split test
    {"question": "A 23-year-old pregnant woman has burning upon urination. Best treatment?",
     "answer": "Nitrofurantoin", "options": {"A": "Ampicillin", "B": "Ceftriaxone", "C": "Doxycycline",
                                             "D": "Nitrofurantoin"},
     "meta_info": "step2&3", "answer_idx": "D", "metamap_phrases": ["pregnant woman", "burning"]},
]
PUBMEDQA = [  # qiaojin/PubMedQA, subset pqa_labeled, split train
    {"pubid": 21645374, "question": "Do mitochondria play a role in remodelling lace plant leaves?",
     "context": {"contexts": ["Programmed cell death is...", "The lace plant..."], "labels": ["BACKGROUND", "RESULTS"],
                 "meshes": ["Apoptosis"], "reasoning_required_pred": ["yes"], "reasoning_free_pred": ["yes"]},
     "long_answer": "Results depict mitochondrial dynamics...", "final_decision": "yes"},
    {"pubid": 16418930, "question": "Is the landing gear of a plane a medical device?",
     "context": {"contexts": ["We asked..."], "labels": ["METHODS"], "meshes": ["Aircraft"],
                 "reasoning_required_pred": ["no"], "reasoning_free_pred": ["no"]},
     "long_answer": "No.", "final_decision": "maybe"},
]
MMLU_PRO = [  # TIGER-Lab/MMLU-Pro, split test: only health and biology belong to the medical subset
    {"question_id": 1, "question": "Which vitamin deficiency causes scurvy?",
     "options": ["A", "B12", "C", "D", "E", "K", "B1", "B6", "Folate", "Niacin"], "answer": "C", "answer_index": 2,
     "cot_content": "", "category": "health", "src": "ori_mmlu-nutrition"},
    {"question_id": 2, "question": "What is a tort?", "options": ["A wrong", "A cake"], "answer": "A",
     "answer_index": 0, "cot_content": "", "category": "law", "src": "ori_mmlu-professional_law"},
    {"question_id": 3, "question": "Where does glycolysis occur?", "options": ["Nucleus", "Cytoplasm", "Mitochondria"],
     "answer": "B", "answer_index": 1, "cot_content": "", "category": "biology", "src": "stemez-Biology"},
]
FIGFONT = [  # gaotang/figlet_font, split test
    {"ability": "figlet_font", "prompt": [{"role": "user", "content": "What word does this say?\n\n#  #\n####\n"}],
     "answer": "HI", "qwen_prompt": "<|im_start|>...", "llama_prompt": "<|start_header_id|>...",
     "reward_model": {"style": "rule", "ground_truth": "HI"},
     "extra_info": {"split": "test", "index": 40000, "question": "What word does this say?\n\n#  #\n####\n",
                    "qwen_prompt": "<|im_start|>...", "llama_prompt": "<|start_header_id|>...", "answer": "HI"}},
    {"ability": "figlet_font", "prompt": [{"role": "user", "content": "Please read the following figlet font:\n\n{_}"}],
     "answer": "OK", "qwen_prompt": "...", "llama_prompt": "...",
     "reward_model": {"style": "rule", "ground_truth": "OK"},
     "extra_info": {"split": "test", "index": 40001, "question": "Please read the following figlet font:\n\n{_}",
                    "qwen_prompt": "...", "llama_prompt": "...", "answer": "OK"}},
]

# name -> (rows, the golds it must read, a phrase the scorer accepts for a gold)
CASES = {
    "minerva_math": (MINERVA, ["1.6", "11.2"], lambda g: f"So the answer is $\\boxed{{{g}}}$."),
    "olympiadbench": (OLYMPIAD, ["2", "\\frac{1}{2}"], lambda g: f"Hence \\boxed{{{g}}}."),
    "medmcqa": (MEDMCQA, ["B", "C"], lambda g: f"The answer is ({g})."),
    "medqa": (MEDQA, ["D"], lambda g: f"... so the answer is \\boxed{{{g}}}."),
    "pubmedqa": (PUBMEDQA, ["A", "C"], lambda g: f"Answer: {g}"),
    "mmlu_pro_medical": (MMLU_PRO, ["C", "B"], lambda g: f"The answer is ({g})."),
    "figfont": (FIGFONT, ["HI", "OK"], lambda g: g),
}


def _parquet(path, rows):
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


@pytest.fixture(scope="module")
def tok(tiny_model):
    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.mark.parametrize("name", list(CASES))
def test_loader_reads_the_hub_columns_and_its_golds_score(name, tmp_path):
    rows, golds, phrase = CASES[name]
    bench = load_benchmark({"name": name, "path": _parquet(tmp_path / "test.parquet", rows)})
    assert [it.gold for it in bench.items] == golds
    score = SCORERS[bench.scorer]
    assert all(score(phrase(g), g) for g in golds)
    assert not any(score(phrase(golds[i - 1]), g) for i, g in enumerate(golds) if golds[i - 1] != g)
    assert BUILTIN_BENCHMARKS[name].hub and BUILTIN_BENCHMARKS[name].split  # a built-in: hub id and split


def test_messages_carry_the_question_options_and_instruction(tmp_path):
    medmcqa = load_benchmark({"name": "medmcqa", "path": _parquet(tmp_path / "a.parquet", MEDMCQA)})
    assert medmcqa.items[0].message == ("Which nerve supplies the deltoid?\n\nA. Radial\nB. Axillary\nC. Ulnar\n"
                                        f"D. Median\n\n{CHOICE_INSTRUCTION}")
    pubmed = load_benchmark({"name": "pubmedqa", "path": _parquet(tmp_path / "b.parquet", PUBMEDQA)})
    assert pubmed.items[0].message.startswith("Context: Programmed cell death is... The lace plant...\nQuestion: Do ")
    assert "A. yes\nB. no\nC. maybe" in pubmed.items[0].message
    minerva = load_benchmark({"name": "minerva_math", "path": _parquet(tmp_path / "c.parquet", MINERVA)})
    assert minerva.items[0].message == f"Find the diameter of the image (in cm).\n{MATH_INSTRUCTION}"
    figfont = load_benchmark({"name": "figfont", "path": _parquet(tmp_path / "d.parquet", FIGFONT)})
    assert figfont.items[1].message == FIGFONT[1]["extra_info"]["question"]  # braces in a puzzle are kept
    assert (figfont.scorer, figfont.use_chat_template, figfont.metric) == ("exact_similarity", False, "exact_match")


def test_a_model_prompt_template_wraps_the_bare_question(tmp_path, tok):
    template = "<|im_start|>user\n{prompt}\nPlease reason step by step.<|im_end|>\n<|im_start|>assistant\n"
    medqa = load_benchmark({"name": "medqa", "path": _parquet(tmp_path / "a.parquet", MEDQA),
                            "prompt_template": template})
    bare = ("A 23-year-old pregnant woman has burning upon urination. Best treatment?\nA. Ampicillin\n"
            "B. Ceftriaxone\nC. Doxycycline\nD. Nitrofurantoin")
    assert medqa.prompts(tok) == [template.format(prompt=bare)]  # no chat template, no second instruction
    olympiad = load_benchmark({"name": "olympiadbench", "path": _parquet(tmp_path / "b.parquet", OLYMPIAD),
                               "prompt_template": template})
    assert olympiad.prompts(tok)[1] == template.format(prompt="Find the smallest $n$.")
    figfont = load_benchmark({"name": "figfont", "path": _parquet(tmp_path / "c.parquet", FIGFONT),
                              "prompt_template": "[{prompt}]"})
    assert figfont.prompts(tok)[1] == "[" + FIGFONT[1]["extra_info"]["question"] + "]"


def test_mmlu_pro_medical_keeps_health_and_biology_only(tmp_path):
    bench = load_benchmark({"name": "mmlu_pro_medical", "path": _parquet(tmp_path / "test.parquet", MMLU_PRO)})
    assert [it.index for it in bench.items] == [0, 1] and len(bench.items) == 2
    assert "J. Niacin" in bench.items[0].message  # ten options, lettered A-J


@pytest.mark.parametrize("name, rows, message", [
    ("medmcqa", [{**MEDMCQA[0], "cop": 7}], "field 'cop': expected an option index 0-3"),
    ("medmcqa", [{k: v for k, v in MEDMCQA[0].items() if k != "opd"}], "missing field 'opd'"),
    ("pubmedqa", [{**PUBMEDQA[0], "final_decision": "perhaps"}], "expected yes, no or maybe"),
    ("olympiadbench", [{**OLYMPIAD[0], "final_answer": []}], "field 'final_answer': expected a non-empty list"),
    ("figfont", [{k: v for k, v in FIGFONT[0].items() if k != "extra_info"}],
     "missing field 'extra_info.question' / 'question'"),
])
def test_bad_rows_name_the_benchmark_row_and_field(tmp_path, name, rows, message):
    with pytest.raises(ValueError, match=f"benchmark '{name}' .*: row 1: .*{message}"):
        load_benchmark({"name": name, "path": _parquet(tmp_path / "t.parquet", rows)})


def test_metrics_and_the_one_a_spec_names(tmp_path):
    assert list(METRICS["exact_similarity"]) == ["exact_match", "similarity"]
    assert similarity("HI\nmore text", "hi") == 1.0 and similarity("", "HI") == 0.0
    assert 0.5 < similarity("HELLP", "HELLO") < 1.0  # Jaro-Winkler: 0.92
    assert similarity("HELLP", "HELLO") == pytest.approx(0.92)
    assert resolve_spec({"name": "figfont", "metric": "similarity"}).metric == "similarity"
    with pytest.raises(ValueError, match="unknown metric 'bleu'; its scorer reports exact_match, similarity"):
        resolve_spec({"name": "figfont", "metric": "bleu"})
    with pytest.raises(ValueError, match="unknown metric 'similarity'; its scorer reports accuracy"):
        resolve_spec(BenchmarkSpec(name="medqa", metric="similarity"))


def test_the_score_follows_the_named_metric_and_every_metric_is_reported(tmp_path, tiny_model):
    """A real model generates on figfont rows; the benchmark's score is the metric its spec names. The golds
    are set from the model's own greedy answers: one answered exactly, one off by a letter."""
    evaluator = Evaluator({"backend": "hf", "max_new_tokens": 4, "batch_size": 8}, log=None)
    questions = ["Please read the following figlet font:\n\n{_}", "What word does this say?\n\n{__}"]

    def rows(golds):
        return [{**FIGFONT[0], "answer": g, "extra_info": {**FIGFONT[0]["extra_info"], "question": q, "answer": g}}
                for q, g in zip(questions, golds, strict=True)]

    try:
        first = evaluator.evaluate(str(tiny_model), [{"name": "figfont", "path": _parquet(tmp_path / "a.parquet",
                                                                                          rows(["?", "?"]))}])
        answers = [r["completion"].strip().splitlines()[0] if r["completion"].strip() else "" for r in first["records"]]
        assert all(answers), f"the tiny model answered with blank lines: {first['records']}"
        path = _parquet(tmp_path / "b.parquet", rows([answers[0] + "x", answers[1]]))
        by_metric = {m: evaluator.evaluate(str(tiny_model), [{"name": "figfont", "path": path, "metric": m}])
                     for m in ("exact_match", "similarity")}
    finally:
        evaluator.close()
    near = similarity(answers[0], answers[0] + "x")
    assert 0.5 < near < 1
    for metric, result in by_metric.items():
        values = result["metrics"]["figfont"]
        assert values == pytest.approx({"exact_match": 0.5, "similarity": (near + 1) / 2})
        assert result["scores"]["figfont"] == result["mean_score"] == values[metric]
        assert [r["correct"] for r in result["records"]] == [False, True]
        assert "figfont: exact_match 0.5000, similarity" in format_table(result)
