"""SFT data on the real tiny tokenizer: completion-only targets, chat turns, truncation, bad rows, files."""

from __future__ import annotations

import json

import datasets
import pytest
from transformers import AutoTokenizer

from alphasweep.config import DataSpec
from alphasweep.data import DataError, collate, load_sft_data, load_sft_rows, pack, tokenize_rows
from alphasweep.rows import load_rows, looks_local


@pytest.fixture(scope="module")
def tok(tiny_model):
    return AutoTokenizer.from_pretrained(tiny_model)


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_prompt_completion_targets_are_the_completion_and_eos(tok, tmp_path):
    spec = DataSpec(path=str(_write(tmp_path / "d.jsonl", [{"q": "12+34=", "a": "46"}])),
                    prompt_field="q", completion_field="a")
    (ex,), stats = tokenize_rows(load_sft_rows(spec), tok, spec, 64, "d.jsonl")
    targets = [t for t, m in zip(ex.input_ids, ex.loss_mask, strict=True) if m]
    assert tok.decode(targets) == "46" + tok.eos_token
    prompt = [t for t, m in zip(ex.input_ids, ex.loss_mask, strict=True) if not m]
    assert tok.decode(prompt, skip_special_tokens=True) == "12+34="
    assert stats == {"rows": 1, "skipped": 0, "truncated": 0}
    batch = collate([ex], tok.pad_token_id)  # labels align with logits: position t predicts token t+1
    predicted = batch["labels"][0][batch["loss_mask"][0]].tolist()
    assert predicted == targets


def test_nested_fields_and_a_prompt_template(tok, tmp_path):
    """The paper's hub data keeps its text in a struct column; a model's template wraps the prompt."""
    rows = [{"extra_info": {"question": "12+34=", "answer": "46"}, "answer": "x"},
            {"extra_info": {"question": "1+1=", "answer": 2}, "answer": "x"}]
    datasets.Dataset.from_list(rows[:1]).to_parquet(str(tmp_path / "n.parquet"))  # a struct column, as the hub
    spec = DataSpec(path=str(tmp_path / "n.parquet"), prompt_field="extra_info.question",
                    completion_field="extra_info.answer", prompt_template="<|user|>{prompt}<|assistant|>")
    (ex,), _ = tokenize_rows(load_sft_rows(spec), tok, spec, 64, "n.parquet")
    prompt = tok("<|user|>12+34=<|assistant|>")["input_ids"]
    assert ex.input_ids[: len(prompt)] == prompt and not any(ex.loss_mask[: len(prompt)])
    assert tok.decode([t for t, m in zip(ex.input_ids, ex.loss_mask, strict=True) if m]) == "46" + tok.eos_token
    bad = DataSpec(path=str(_write(tmp_path / "n.jsonl", rows[1:])), prompt_field="extra_info.question",
                   completion_field="extra_info.answer")
    with pytest.raises(DataError, match=r"n.jsonl: line 1: field 'extra_info.answer': expected a string, found int 2"):
        tokenize_rows(load_sft_rows(bad), tok, bad, 64, "n.jsonl")


def test_messages_train_on_every_assistant_turn_only(tok, tmp_path):
    conv = [{"role": "user", "content": "1+1="}, {"role": "assistant", "content": "2"},
            {"role": "user", "content": "2+2="}, {"role": "assistant", "content": "4"}]
    spec = DataSpec(path=str(_write(tmp_path / "c.jsonl", [{"messages": conv}])), format="messages")
    (ex,), _ = tokenize_rows(load_sft_rows(spec), tok, spec, 64, "c.jsonl")
    targets = tok.decode([t for t, m in zip(ex.input_ids, ex.loss_mask, strict=True) if m])
    assert targets == f"2{tok.eos_token}4{tok.eos_token}"
    assert tok.decode(ex.input_ids) == tok.apply_chat_template(conv, tokenize=False)


def test_truncation_is_counted_and_parquet_loads(tok, tmp_path):
    rows = [{"prompt": "1+1=", "completion": "2"}, {"prompt": "9" * 40 + "+1=", "completion": "1" * 40}]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "d.parquet"))
    spec = DataSpec(path=str(tmp_path / "d.parquet"), heldout=0)
    data = load_sft_data(spec, tok, max_length=32)
    assert data.stats == {"rows": 2, "skipped": 0, "truncated": 1}
    assert max(len(e.input_ids) for e in data.train) == 32


@pytest.mark.parametrize("row, field", [
    ({"prompt": "1+1="}, r"missing field 'completion' \(the row has 'prompt'\)"),
    ({"prompt": "1+1=", "completion": "  "}, "field 'completion': expected a non-empty completion, found '  '"),
    ({"prompt": 5, "completion": "2"}, "field 'prompt': expected a string, found int 5"),
])
def test_bad_rows_name_file_line_and_field_or_are_skipped(tok, tmp_path, row, field):
    path = _write(tmp_path / "bad.jsonl", [{"prompt": "1+1=", "completion": "2"}, row])
    with pytest.raises(DataError, match=rf"bad.jsonl: line 2: {field}"):
        tokenize_rows(load_sft_rows(DataSpec(path=str(path))), tok, DataSpec(path=str(path)), 64, str(path))
    spec = DataSpec(path=str(path), skip_bad_rows=True)
    examples, stats = tokenize_rows(load_sft_rows(spec), tok, spec, 64, str(path))
    assert len(examples) == 1 and stats["skipped"] == 1


def test_missing_file_and_packing(tok, tmp_path):
    with pytest.raises(FileNotFoundError, match="data file not found"):
        load_sft_rows(DataSpec(path=str(tmp_path / "nope.jsonl")))
    spec = DataSpec(path=str(_write(tmp_path / "d.jsonl", [{"prompt": f"{i}+1=", "completion": str(i + 1)}
                                                           for i in range(20)])))
    examples, _ = tokenize_rows(load_sft_rows(spec), tok, spec, 64, "d.jsonl")
    packed = pack(examples, 24)
    assert len(packed) < len(examples) and all(len(p.input_ids) <= 24 for p in packed)
    assert sum(sum(p.loss_mask) for p in packed) == sum(sum(e.loss_mask) for e in examples)


def test_rows_keep_their_values_and_their_place_in_the_file(tmp_path):
    """No type coercion (a number stays a number beside strings) and 1-based places: JSON Lines by line
    (blank lines counted), a JSON list (or an object holding one) by row; a .json of JSON Lines reads as lines."""
    lines = tmp_path / "d.jsonl"
    lines.write_text('{"completion": "19"}\n\n{"completion": 4}\n')
    assert load_rows(str(lines)) == [("line 1", {"completion": "19"}), ("line 3", {"completion": 4})]
    wrapped = tmp_path / "w.json"
    wrapped.write_text(json.dumps({"version": 2, "data": [{"completion": "19"}, {"completion": 4}]}))
    assert load_rows(str(wrapped)) == [("row 1", {"completion": "19"}), ("row 2", {"completion": 4})]
    as_lines = tmp_path / "l.json"
    as_lines.write_text('{"completion": "19"}\n{"completion": 4}\n')
    assert [where for where, _ in load_rows(str(as_lines))] == ["line 1", "line 2"]
    (tmp_path / "folder").mkdir()
    _write(tmp_path / "folder" / "train.jsonl", [{"completion": "1"}])
    assert load_rows(str(tmp_path / "folder")) == [("line 1", {"completion": "1"})]


def test_rows_from_files_folders_wrapped_json_and_home_paths(tmp_path, monkeypatch):
    """One reader for SFT data and benchmarks: `~` is expanded everywhere, a folder gives its split's file,
    a JSON object holding one list of rows gives the rows, and an unreadable file names itself."""
    monkeypatch.setenv("HOME", str(tmp_path))
    rows = [{"prompt": "1+1=", "completion": "2"}, {"prompt": "2+2=", "completion": "4"}]
    (tmp_path / "folder").mkdir()
    _write(tmp_path / "folder" / "test.jsonl", rows)
    (tmp_path / "wrapped.json").write_text(json.dumps({"version": 1, "data": rows}))
    assert [row for _, row in load_rows("~/folder", split="test")] == rows
    assert [row for _, row in load_rows("~/wrapped.json")] == rows
    assert all(map(looks_local, ["~/x.jsonl", "./x", "/x", "x.parquet", "runs/demo/checkpoint"]))
    assert not any(map(looks_local, ["gsm8k", "openai/gsm8k", "Qwen/Qwen2.5-Math-1.5B"]))
    with pytest.raises(FileNotFoundError, match="benchmark file not found: ~/nope.jsonl"):
        load_rows("~/nope.jsonl", what="benchmark")
    with pytest.raises(FileNotFoundError, match="holds no train.jsonl"):
        load_rows("~/folder")
    (tmp_path / "broken.jsonl").write_text('{"prompt": "1+1="}\n{"prompt": \n')
    with pytest.raises(DataError, match=r"broken.jsonl: line 2: not valid JSON"):
        load_rows("~/broken.jsonl")
