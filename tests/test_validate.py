"""Every bad input stopped at the door: the real `alphasweep` command on real files written here.

Each bad input must exit 2 with its culprit named on the last line of stderr, print no traceback, and
leave Ray unstarted (the command runs in a subprocess that records, as it exits, whether Ray was
initialized and which heavy modules it imported).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from mlflow.tracking import MlflowClient

from local_services import free_port, postgres

# Runs the CLI in this interpreter and, whatever happens, writes what the process did to a state file.
_RUNNER = """
import json, os, sys
try:
    from alphasweep.cli import main
    main(args=sys.argv[1:], prog_name="alphasweep")
finally:
    ray = sys.modules.get("ray")
    with open(os.environ["ALPHASWEEP_TEST_STATE"], "w") as f:
        json.dump({"ray_started": bool(ray is not None and ray.is_initialized()),
                   "modules": sorted(m for m in ("torch", "ray", "datasets", "transformers", "huggingface_hub")
                                     if m in sys.modules)}, f)
"""


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str
    ray_started: bool
    modules: list[str]

    @property
    def last_error(self) -> str:
        lines = self.stderr.strip().splitlines()
        return lines[-1] if lines else ""


def run_cli(tmp_path: Path, *args: str, env: dict | None = None, timeout: float = 300) -> Run:
    state = tmp_path / f"state-{os.getpid()}-{len(list(tmp_path.glob('state-*')))}.json"
    proc = subprocess.run([sys.executable, "-c", _RUNNER, *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {}), "ALPHASWEEP_TEST_STATE": str(state)}, timeout=timeout)
    recorded = json.loads(state.read_text())
    return Run(proc.returncode, proc.stdout, proc.stderr, recorded["ray_started"], recorded["modules"])


def assert_stopped(run: Run, culprit: str) -> None:
    """Exit 2, the culprit on the last stderr line, no traceback, Ray never started."""
    assert run.code == 2, (run.code, run.stdout[-2000:], run.stderr[-3000:])
    assert culprit in run.last_error, run.stderr[-3000:]
    assert "Traceback" not in run.stderr and "ray::" not in run.stderr, run.stderr[-3000:]
    assert not run.ray_started


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_config(tmp_path: Path, tiny_model: Path, addition_files, **sections) -> Path:
    """A valid one-pair config on the tiny model and the addition files; `sections` replace top-level keys."""
    cfg = {
        "name": "v",
        "output_dir": str(tmp_path / "out"),
        "models": [{"name": "tiny", "path": str(tiny_model)}],
        "domains": [{"name": "addition", "train": {"path": str(addition_files[0])},
                     "benchmarks": [{"name": "addition", "path": str(addition_files[1]), "format": "exact"}]}],
        "train": {"steps": 4, "batch_size": 8, "max_length": 24},
    }
    cfg.update(sections)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def domain(train: Path | str, bench: Path | str, name: str = "addition", **train_fields) -> dict:
    return {"name": name, "train": {"path": str(train), **train_fields},
            "benchmarks": [{"name": "addition", "path": str(bench), "format": "exact"}]}


# ---------------------------------------------------------------- a good config


def test_a_good_config_passes_with_a_summary_and_touches_nothing(tmp_path, tiny_model, addition_files):
    config = write_config(tmp_path, tiny_model, addition_files)
    run = run_cli(tmp_path, "validate", config)
    assert run.code == 0, run.stderr
    assert run.stdout.strip() == ("ok: 1 pair (1 model x 1 domain), 512 training rows in 1 file, "
                                  "1 benchmark (64 rows read)"), run.stdout
    assert not (tmp_path / "out").exists()  # the output directory was tried and removed again
    assert not run.ray_started and "ray" not in run.modules and "torch" not in run.modules, run.modules


def test_help_and_the_demo_config_need_neither_torch_nor_ray(tmp_path):
    for args in (["--help"], ["validate", "--help"], ["sweep", "--help"]):
        run = run_cli(tmp_path, *args)
        assert run.code == 0 and "Usage:" in run.stdout, run.stderr
        assert not set(run.modules) & {"torch", "ray"}, (args, run.modules)
    assert "hub id" in run_cli(tmp_path, "validate", "--help").stdout  # says what it leaves to load time
    run = run_cli(tmp_path, "validate")  # no CONFIG: the embedded demo's
    assert run.code == 0 and "7 demo: paths" in run.stdout, run.stdout + run.stderr  # the base + 3 pairs x (data, test)
    assert not set(run.modules) & {"torch", "ray"}, run.modules


def test_existing_sqlite_stores_are_opened_read_only(tmp_path, tiny_model, addition_files):
    """A sweep's own sqlite stores, once they exist, are opened and left byte for byte as they were."""
    (tmp_path / "out").mkdir()
    db = tmp_path / "out" / "optuna.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (x)")
    conn.close()
    before = db.read_bytes()
    run = run_cli(tmp_path, "validate", write_config(tmp_path, tiny_model, addition_files))
    assert run.code == 0, run.stderr
    assert db.read_bytes() == before and sorted(p.name for p in (tmp_path / "out").iterdir()) == ["optuna.db"]


@pytest.mark.skipif(not list(Path(__file__).resolve().parents[1].glob("configs/paper/*.yaml")),
                    reason="no paper presets (configs/paper/*.yaml) in this checkout")
def test_paper_presets_pass_without_fetching_hub_ids(tmp_path):
    for preset in sorted(Path(__file__).resolve().parents[1].glob("configs/paper/*.yaml")):
        run = run_cli(tmp_path, "validate", preset, "--set", f"output_dir={tmp_path / preset.stem}")
        assert run.code == 0, (preset, run.stderr)
        assert not set(run.modules) & {"datasets", "transformers", "huggingface_hub"}, (preset, run.modules)


# ---------------------------------------------------------------- names the config did not check


@pytest.mark.parametrize("case, culprit", [
    ("unknown benchmark", "domains.0.benchmarks.0: unknown benchmark 'nope'"),
    ("two models", "models.1.name: 'tiny' is already the name of models.0"),
    ("two domains", "domains.1.name: 'addition' is already the name of domains.0"),
    ("two benchmarks", "domains.0.benchmarks.1.name: 'addition' is already the name of domains.0.benchmarks.0"),
    ("slash in a name", "models.0.name: 'org/tiny' must not contain '/'"),
    ("enqueue outside the families", "search.enqueue: 'p' is of family 'p', which search.families (nll, general)"),
])
def test_names_and_cross_field_rules(tmp_path, tiny_model, addition_files, case, culprit):
    train, bench = addition_files
    model = {"name": "tiny", "path": str(tiny_model)}
    sections = {
        "unknown benchmark": {"domains": [{**domain(train, bench), "benchmarks": [{"name": "nope"}]}]},
        "two models": {"models": [model, model]},
        "two domains": {"domains": [domain(train, bench), domain(train, bench)]},
        "two benchmarks": {"domains": [{**domain(train, bench), "benchmarks": domain(train, bench)["benchmarks"] * 2}]},
        "slash in a name": {"models": [{**model, "name": "org/tiny"}]},
        "enqueue outside the families": {"search": {"families": ["nll", "general"], "enqueue": ["original", "p"]}},
    }[case]
    run = run_cli(tmp_path, "sweep", write_config(tmp_path, tiny_model, addition_files, **sections))
    assert_stopped(run, culprit)
    assert not (tmp_path / "out").exists()


def test_budget_and_override_values(tmp_path, tiny_model, addition_files):
    config = write_config(tmp_path, tiny_model, addition_files)
    assert_stopped(run_cli(tmp_path, "sweep", config, "--set", "budget.trials_per_pair=0"),
                   "budget.trials_per_pair: Input should be greater than or equal to 1, found 0")
    assert_stopped(run_cli(tmp_path, "sweep", config, "--set", "budget.trials_per_pair=many"),
                   "budget.trials_per_pair: Input should be a valid integer")
    assert_stopped(run_cli(tmp_path, "sweep", config, "--set", "train.stpes=5"), "train.stpes: Extra inputs")
    assert_stopped(run_cli(tmp_path, "sweep", config, "--set", "train.steps=[1"),
                   "override 'train.steps=[1': the value is not valid YAML")
    assert_stopped(run_cli(tmp_path, "sweep", config, "--set", "domains.0.train_overrides={steps: -1}"),
                   "domains.0.train_overrides.steps: Input should be greater than or equal to 1")


# ---------------------------------------------------------------- storage and tracking URLs


@pytest.mark.parametrize("setting, culprit", [
    ("storage.optuna=notadb://x", "storage.optuna: unknown database scheme 'notadb' in notadb://x"),
    ("storage.optuna=not a url", "storage.optuna: 'not a url' is not a database URL"),
    # SQLAlchemy 2.1 maps postgresql:// to psycopg 3, which is not installed here
    ("storage.optuna=postgresql://u@127.0.0.1:5432/optuna", "its driver 'psycopg' is not installed"),
    ("storage.optuna=postgresql+psycopg2://u@127.0.0.1:{port}/optuna",
     'storage.optuna: cannot open postgresql+psycopg2://u@127.0.0.1:{port}/optuna: connection to server'),
    ("tracking.mlflow_uri=http://127.0.0.1:{port}",
     "tracking.mlflow_uri: tracking server http://127.0.0.1:{port} is unreachable"),
    ("tracking.mlflow_uri=ftp://host/x", "tracking.mlflow_uri: unknown tracking URI scheme 'ftp'"),
    ("tracking.mlflow_uri=./mlruns", "MLflow 3.17 refuses a file store"),
])
def test_storage_and_tracking_urls(tmp_path, tiny_model, addition_files, setting, culprit):
    port = free_port()  # nothing listens there
    config = write_config(tmp_path, tiny_model, addition_files)
    run = run_cli(tmp_path, "sweep", config, "--set", setting.format(port=port), timeout=120)
    assert_stopped(run, culprit.format(port=port))
    assert not (tmp_path / "out").exists()


def test_a_store_that_is_not_a_database(tmp_path, tiny_model, addition_files):
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is no sqlite database" * 100)
    config = write_config(tmp_path, tiny_model, addition_files, storage={"optuna": f"sqlite:///{garbage}"})
    assert_stopped(run_cli(tmp_path, "sweep", config), f"storage.optuna: cannot open sqlite:///{garbage}: file is not")
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{garbage}"}  # the environment's setting is named as such
    assert_stopped(run_cli(tmp_path, "validate", write_config(tmp_path, tiny_model, addition_files), env=env),
                   "$MLFLOW_TRACKING_URI: cannot open")
    assert garbage.read_bytes() == b"this is no sqlite database" * 100


def test_postgres_database_that_does_not_exist(tmp_path, tiny_model, addition_files):
    with postgres() as (port, _sockets, _bin):
        url = f"postgresql+psycopg2://postgres@127.0.0.1:{port}/nosuchdb"
        run = run_cli(tmp_path, "validate", write_config(tmp_path, tiny_model, addition_files),
                      "--set", f"storage.optuna={url}")
        assert_stopped(run, f'storage.optuna: cannot open {url}: connection to server at "127.0.0.1", port {port} '
                            'failed: FATAL:  database "nosuchdb" does not exist')
        ok = run_cli(tmp_path, "validate", write_config(tmp_path, tiny_model, addition_files),
                     "--set", f"storage.optuna={url.replace('nosuchdb', 'postgres')}")
        assert ok.code == 0, ok.stderr


# ---------------------------------------------------------------- data files, every row


@pytest.mark.parametrize("case, culprit", [
    # the loader's type inference used to turn line 1's "19" into a number and blame row 0
    ("wrong row blamed", "wrong.jsonl: line 2: field 'completion': expected a string, found int 4"),
    ("broken JSONL line", "broken.jsonl: line 2: not valid JSON: Expecting value (column 31)"),
    ("garbage .json", "garbage.json: not UTF-8 text (byte 0xff at offset 0); expected JSON"),
    ("not JSON .json", "notjson.json: not valid JSON: Expecting value (line 1 column 1)"),
    ("empty file", "empty.jsonl: no rows (the file is empty)"),
    ("missing completion", "nocomp.jsonl: line 3: missing field 'completion' (the row has 'prompt')"),
    ("empty completion", "blank.jsonl: line 1: field 'completion': expected a non-empty completion, found '  '"),
    ("not an object", "list.json: row 2: expected a JSON object, found list ['1+1=', '2']"),
    ("parquet null", "null.parquet: row 2: field 'completion': expected a string, found null"),
    ("garbage parquet", "junk.parquet: not a readable Parquet file"),
    ("messages", "chat.jsonl: line 1: field 'messages': expected a non-empty assistant message, found none"),
    ("missing file", "domains.0.train.path: data file not found: "),
])
def test_every_data_row_is_checked(tmp_path, tiny_model, addition_files, case, culprit):
    ok = {"prompt": "1+1=", "completion": "2"}
    if case == "wrong row blamed":
        train = write_jsonl(tmp_path / "wrong.jsonl", [{"prompt": "a", "completion": c} for c in ("19", 4, "19")])
    elif case == "broken JSONL line":
        train = tmp_path / "broken.jsonl"
        train.write_text(json.dumps(ok) + '\n{"prompt": "b", "completion": \n' + json.dumps(ok) + "\n")
    elif case == "garbage .json":
        train = tmp_path / "garbage.json"
        train.write_bytes(bytes([0xFF, 0x00, 0x13, 0x80]) * 64)
    elif case == "not JSON .json":
        train = tmp_path / "notjson.json"
        train.write_text("prompt,completion\n1+1=,2\n")
    elif case == "empty file":
        train = tmp_path / "empty.jsonl"
        train.write_bytes(b"")
    elif case == "missing completion":
        train = write_jsonl(tmp_path / "nocomp.jsonl", [ok, ok, {"prompt": "3+3="}])
    elif case == "empty completion":
        train = write_jsonl(tmp_path / "blank.jsonl", [{"prompt": "1+1=", "completion": "  "}])
    elif case == "not an object":
        train = tmp_path / "list.json"
        train.write_text(json.dumps([ok, ["1+1=", "2"]]))
    elif case in ("parquet null", "garbage parquet"):
        train = tmp_path / ("null.parquet" if case == "parquet null" else "junk.parquet")
        if case == "parquet null":
            pq.write_table(pa.Table.from_pylist([ok, {"prompt": "2+2=", "completion": None}]), train)
        else:
            train.write_bytes(b"PAR1 but not really" * 10)
    elif case == "messages":
        train = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    else:
        train = tmp_path / "nowhere" / "train.jsonl"
    fields = {"format": "messages"} if case == "messages" else {}
    config = write_config(tmp_path, tiny_model, addition_files, domains=[domain(train, addition_files[1], **fields)])
    run = run_cli(tmp_path, "sweep", config)
    assert_stopped(run, culprit)
    assert not (tmp_path / "out").exists()


def test_skip_bad_rows_needs_one_usable_row(tmp_path, tiny_model, addition_files):
    train = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "1+1="}, {"prompt": "2+2=", "completion": 4}])
    config = write_config(tmp_path, tiny_model, addition_files,
                          domains=[domain(train, addition_files[1], skip_bad_rows=True)])
    assert_stopped(run_cli(tmp_path, "validate", config), "bad.jsonl: no usable rows (every row is bad")
    write_jsonl(train, [{"prompt": "1+1="}, {"prompt": "2+2=", "completion": "4"}])
    run = run_cli(tmp_path, "validate", config)
    assert run.code == 0 and "2 training rows in 1 file" in run.stdout, run.stderr


# ---------------------------------------------------------------- benchmarks


@pytest.mark.parametrize("case, culprit", [
    ("missing answer", "benchmark 'addition' ({path}): line 2: missing field 'answer' (the row has 'prompt')"),
    ("template field", "benchmark 'addition' ({path}): line 1: template refers to a missing field 'question'"),
    ("no format", "domains.0.benchmarks.0: benchmark 'mine': a benchmark that is not built in needs `format`"),
    ("unknown format", "domains.0.benchmarks.0: benchmark 'addition': unknown format 'exactly'"),
    ("missing file", "domains.0.benchmarks.0.path: benchmark file not found: "),
])
def test_benchmarks_against_the_registry_and_their_files(tmp_path, tiny_model, addition_files, case, culprit):
    bench = write_jsonl(tmp_path / "bench.jsonl", [{"prompt": "1+1=", "answer": "2"}, {"prompt": "2+2="}])
    spec = {"name": "addition", "path": str(bench), "format": "exact"}
    spec = {
        "missing answer": spec,
        "template field": {**spec, "template": "Q: {question}"},
        "no format": {"name": "mine", "path": str(bench)},
        "unknown format": {**spec, "format": "exactly"},
        "missing file": {**spec, "path": str(tmp_path / "nope.jsonl")},
    }[case]
    config = write_config(tmp_path, tiny_model, addition_files, domains=[
        {"name": "addition", "train": {"path": str(addition_files[0])}, "benchmarks": [spec]}])
    assert_stopped(run_cli(tmp_path, "sweep", config), culprit.format(path=bench))


# ---------------------------------------------------------------- models and the output directory


def test_model_directories(tmp_path, tiny_model, addition_files):
    no_tokenizer = tmp_path / "no-tokenizer"
    shutil.copytree(tiny_model, no_tokenizer, ignore=shutil.ignore_patterns("tokenizer*", "chat_template*"))
    no_config = tmp_path / "no-config"
    shutil.copytree(tiny_model, no_config, ignore=shutil.ignore_patterns("config.json"))
    for path, culprit in [
        ("/nonexistent/model", "models.0.path: model directory not found: /nonexistent/model"),
        (str(no_tokenizer), f"models.0.path: model directory {no_tokenizer} holds no tokenizer"),
        (str(no_config), f"models.0.path: model directory {no_config} holds no config.json"),
        (str(addition_files[0]), f"models.0.path: {addition_files[0]} is a file, not a model directory"),
    ]:
        config = write_config(tmp_path, tiny_model, addition_files, models=[{"name": "m", "path": path}])
        assert_stopped(run_cli(tmp_path, "sweep", config), culprit)
    # a hub id is left to load time, and the summary says so
    config = write_config(tmp_path, tiny_model, addition_files, models=[{"name": "m", "path": "Qwen/Qwen2.5-0.5B"}])
    run = run_cli(tmp_path, "validate", config)
    assert run.code == 0 and "left to load time: hub ids Qwen/Qwen2.5-0.5B" in run.stdout, run.stderr
    assert "huggingface_hub" not in run.modules


@pytest.mark.parametrize("model", ["/nonexistent", "./nonexistent", "~/nonexistent-alphasweep-model"])
def test_probe_of_a_missing_local_model(tmp_path, addition_files, model):
    run = run_cli(tmp_path, "probe", "--model", model, "--data", addition_files[0])
    assert_stopped(run, f"--model: model directory not found: {model}")
    assert "torch" not in run.modules  # stopped before the model would load


def test_probe_names_the_bad_line_and_the_empty_file(tmp_path, tiny_model):
    wrong = write_jsonl(tmp_path / "wrong.jsonl", [{"prompt": "a", "completion": c} for c in ("19", 4, "19")])
    assert_stopped(run_cli(tmp_path, "probe", "--model", tiny_model, "--data", wrong),
                   f"error: {wrong}: line 2: field 'completion': expected a string, found int 4")
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    assert_stopped(run_cli(tmp_path, "probe", "--model", tiny_model, "--data", empty),
                   f"error: {empty}: no rows (the file is empty)")
    assert_stopped(run_cli(tmp_path, "probe", "--model", tiny_model, "--data", tmp_path / "nope.jsonl"),
                   f"error: --data: data file not found: {tmp_path / 'nope.jsonl'}")
    assert "torch" not in run_cli(tmp_path, "probe", "--model", tiny_model, "--data", empty).modules


def test_output_directory_that_cannot_be_created(tmp_path, tiny_model, addition_files):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    config = write_config(tmp_path, tiny_model, addition_files, output_dir=str(blocker / "out"))
    assert_stopped(run_cli(tmp_path, "sweep", config), f"output_dir: {blocker} is a file, not a directory")
    config = write_config(tmp_path, tiny_model, addition_files, storage={"checkpoints": str(blocker / "ckpt")})
    assert_stopped(run_cli(tmp_path, "sweep", config), f"storage.checkpoints: {blocker} is a file, not a directory")


# ---------------------------------------------------------------- --all, train, submit, CLI options


def test_all_lists_every_error_one_per_line(tmp_path, tiny_model, addition_files):
    train = write_jsonl(tmp_path / "t.jsonl", [{"prompt": "a"}, {"prompt": "b", "completion": 1}])
    config = write_config(tmp_path, tiny_model, addition_files,
                          models=[{"name": "m", "path": "/nonexistent/m"}, {"name": "m", "path": str(tiny_model)}],
                          domains=[domain(train, addition_files[1])], storage={"optuna": "notadb://x"})
    run = run_cli(tmp_path, "validate", config, "--all")
    assert run.code == 2 and "Traceback" not in run.stderr and not run.ray_started
    assert run.stderr.strip().splitlines() == [
        "error: models.1.name: 'm' is already the name of models.0; names must be unique (each pair has its own "
        "study and runs)",
        "error: models.0.path: model directory not found: /nonexistent/m",
        "error: storage.optuna: unknown database scheme 'notadb' in notadb://x (expected sqlite, postgresql, "
        "mysql, ...)",
        f"error: {train}: line 1: missing field 'completion' (the row has 'prompt')",
        f"error: {train}: line 2: field 'completion': expected a string, found int 1",
    ]
    first = run_cli(tmp_path, "validate", config)  # without --all: the first error only
    assert first.code == 2 and first.stderr.strip().splitlines() == run.stderr.strip().splitlines()[:1]
    fields = run_cli(tmp_path, "validate", config, "--all", "--set", "budget.max_concurrent=0",
                     "--set", "train.steps=0")  # every field error of the config itself
    assert [line.split(": ")[2] for line in fields.stderr.strip().splitlines()] == ["budget.max_concurrent",
                                                                                    "train.steps"], fields.stderr


def test_train_checks_its_pair_before_ray(tmp_path, tiny_model, addition_files):
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "1+1=", "completion": "2"}\n{oops}\n')
    config = write_config(tmp_path, tiny_model, addition_files, domains=[domain(broken, addition_files[1])])
    assert_stopped(run_cli(tmp_path, "train", "--config", config), f"{broken}: line 2: not valid JSON")
    assert "torch" not in run_cli(tmp_path, "train", "--config", config).modules


def test_submit_checks_the_config_before_contacting_the_cluster(tmp_path, tiny_model, addition_files):
    """Paths are the cluster's (a missing local model is fine here); names and URL schemes are checked."""
    model = {"name": "m", "path": "/only/on/the/cluster"}
    address = f"http://127.0.0.1:{free_port()}"
    config = write_config(tmp_path, tiny_model, addition_files, models=[model, model])
    assert_stopped(run_cli(tmp_path, "submit", config, "--address", address),
                   "models.1.name: 'm' is already the name of models.0")
    config = write_config(tmp_path, tiny_model, addition_files, models=[model], storage={"optuna": "notadb://x"})
    assert_stopped(run_cli(tmp_path, "submit", config, "--address", address), "unknown database scheme 'notadb'")
    config = write_config(tmp_path, tiny_model, addition_files, models=[model])
    run = run_cli(tmp_path, "submit", config, "--address", address)  # valid: on to the (absent) cluster
    assert run.code == 1 and "cannot reach the Ray Jobs API" in run.last_error, run.stderr
    cluster = run_cli(tmp_path, "validate", config, "--cluster")
    assert cluster.code == 0 and cluster.stdout.startswith("ok: 1 pair"), cluster.stderr


@pytest.mark.parametrize("args, culprit", [
    (["sweep", "--extend", "-3"], "Invalid value for '--extend': -3 is not in the range x>=1"),
    (["sweep", "--extend", "0"], "Invalid value for '--extend': 0 is not in the range x>=1"),
    (["eval", "--checkpoint", "x", "--benchmarks", "gsm8k", "--limit", "0"],
     "Invalid value for '--limit': 0 is not in the range x>=1"),
    (["eval", "--checkpoint", "x", "--benchmarks", "gsm8k", "--max-new-tokens", "0"],
     "Invalid value for '--max-new-tokens'"),
    (["probe", "--model", "x", "--data", "y", "--sample", "0"], "Invalid value for '--sample'"),
])
def test_cli_options_are_checked_by_click(tmp_path, args, culprit):
    assert_stopped(run_cli(tmp_path, *args), culprit)


def test_eval_output_that_cannot_be_written(tmp_path, tiny_model, addition_files):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    run = run_cli(tmp_path, "eval", "--checkpoint", tiny_model, "--benchmarks", f"a={addition_files[1]}",
                  "--out", blocker / "records.jsonl")
    assert_stopped(run, f"--out: {blocker} is a file, not a directory")


# ---------------------------------------------------------------- user errors raised inside Ray


def test_remote_user_error_is_its_own_line(ray_local, tmp_path, tiny_model, addition_files):
    """A hub dataset is left to load time; offline, the probe's Ray task fails to load it. The user gets the
    DataError's line, not `ray::probe_capability()` and a remote traceback; the pair's run is marked FAILED."""
    config = write_config(tmp_path, tiny_model, addition_files,
                          domains=[domain("nobody/no-such-dataset", addition_files[1])])
    env = {"RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    run = run_cli(tmp_path, "sweep", config, env=env, timeout=600)
    assert run.code == 2, run.stdout[-2000:] + run.stderr[-3000:]
    assert run.last_error.startswith("error: cannot load data dataset 'nobody/no-such-dataset'"), run.stderr[-3000:]
    assert "Traceback" not in run.stderr and "ray::" not in run.stderr, run.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/out/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("v").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]


def test_evaluator_user_error_in_a_trial_is_its_own_line(ray_local, tmp_path, tiny_model, addition_files):
    """A built-in benchmark without a path is a hub id, left to load time; offline, the evaluator actor cannot
    load it. The trial fails and the sweep's log says why in one line, not only where the trace is."""
    config = write_config(tmp_path, tiny_model, addition_files,
                          domains=[{"name": "addition", "train": {"path": str(addition_files[0]), "heldout": 8},
                                    "benchmarks": [{"name": "gsm8k"}]}],
                          search={"families": ["nll"], "enqueue": ["original"]},
                          budget={"trials_per_pair": 1, "max_concurrent": 1},
                          train={"steps": 2, "batch_size": 8, "max_length": 24, "report_every": 1, "eval_every": 2})
    env = {"RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    run = run_cli(tmp_path, "sweep", config, env=env, timeout=900)
    failed = [line for line in run.stdout.splitlines() if "#0 original: FAILED" in line]
    assert len(failed) == 1, run.stdout[-3000:] + run.stderr[-3000:]
    assert "cannot load benchmark dataset 'openai/gsm8k'" in failed[0], failed[0]
