"""The checks run before anything starts: `alphasweep validate`, and first thing in `sweep`, `train`, `submit`.

Everything that can be checked without training: cross-field rules of the config, local model
directories, the output directory, the Optuna storage and MLflow tracking URLs, benchmark names against
the registry, and every row of every local data and benchmark file. Each `check_*(cfg, found)` reports
into a `Findings`: the first error stops validation, or with `all_errors` every error is collected.

Hub ids (models, datasets, built-in benchmarks without a `path`) are left to load time: checking them
needs the network. Nothing is created or changed: an existing sqlite file is opened read-only, a server
database is only connected to, and a missing output directory is created to try it and removed again.

Torch-free and Ray-free; sqlalchemy and pyarrow are imported only by the checks that need them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import tempfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from alphasweep.config import DEMO_PREFIX, BenchmarkSpec, ConfigError, DataSpec, SweepConfig
from alphasweep.evaluation.benchmarks import benchmark_format, benchmark_source, resolve_spec, row_item
from alphasweep.objectives import parse_objective
from alphasweep.rows import DataError, Row, check_sft_row, describe, load_rows, looks_local
from alphasweep.synthetic import TASKS

# A model directory holds its tokenizer in one of these (fast, SentencePiece, BPE or WordPiece vocabularies).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json", "vocab.txt")
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")
# MLflow's database-backed tracking stores (mlflow.store.db.db_types; importing MLflow here costs seconds).
MLFLOW_DATABASES = ("postgresql", "mysql", "sqlite", "mssql")
CONNECT_TIMEOUT_S = 10
ROW_ERRORS_LISTED = 20  # per file with --all; a wrong field name makes every row bad
# Names of models and domains become Optuna study names (`model/domain`) and MLflow filter strings.
_NAME = re.compile(r"[^/\\'\"`\s]+")


@dataclass
class Findings:
    """What validation found: the errors (one line each) and what it read, for the summary line."""

    all_errors: bool = False
    errors: list[str] = field(default_factory=list)
    models: int = 0
    domains: int = 0
    benchmarks: int = 0
    data_files: int = 0
    rows: int = 0
    benchmark_rows: int = 0
    hub_ids: list[str] = field(default_factory=list)  # left to load time
    demo_paths: list[str] = field(default_factory=list)  # built when the sweep starts
    elsewhere: list[str] = field(default_factory=list)  # remote storage this machine does not try

    def error(self, message: str) -> None:
        if not self.all_errors:
            raise ConfigError(message)
        self.errors.append(message)

    def summary(self) -> str:
        line = (f"ok: {_n(self.models * self.domains, 'pair')} ({_n(self.models, 'model')} x "
                f"{_n(self.domains, 'domain')}), {_n(self.rows, 'training row')} in {_n(self.data_files, 'file')}, "
                f"{_n(self.benchmarks, 'benchmark')} ({_n(self.benchmark_rows, 'row')} read)")
        if self.hub_ids:
            line += f"; left to load time: hub ids {', '.join(dict.fromkeys(self.hub_ids))}"
        if self.demo_paths:
            line += f"; built when the sweep starts: {_n(len(set(self.demo_paths)), 'demo: path')}"
        if self.elsewhere:
            line += f"; not tried from here: {', '.join(dict.fromkeys(self.elsewhere))}"
        return line


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


Check = Callable[[SweepConfig, Findings], None]


def validate(cfg: SweepConfig, checks: tuple[Check, ...] | None = None, *, all_errors: bool = False) -> Findings:
    """Run `checks` (default: everything a sweep needs); raise a ConfigError with every error found."""
    found = Findings(all_errors=all_errors, models=len(cfg.models), domains=len(cfg.domains),
                     benchmarks=sum(len(d.benchmarks) for d in cfg.domains))
    for check in checks or SWEEP_CHECKS:
        check(cfg, found)
    if found.errors:
        more = f" (and {len(found.errors) - 1} more)" if len(found.errors) > 1 else ""
        raise ConfigError(found.errors[0] + more, found.errors)
    return found


# ---------------------------------------------------------------- the config itself


def check_names(cfg: SweepConfig, found: Findings) -> None:
    """Model and domain names are unique and fit in study names; benchmark names are unique per domain."""
    for section, items in (("models", cfg.models), ("domains", cfg.domains)):
        first: dict[str, int] = {}
        for i, item in enumerate(items):
            if not _NAME.fullmatch(item.name):
                found.error(f"{section}.{i}.name: {item.name!r} must not contain '/', quotes or spaces "
                            "(it names Optuna studies and MLflow runs)")
            if item.name in first:
                found.error(f"{section}.{i}.name: {item.name!r} is already the name of {section}.{first[item.name]}; "
                            "names must be unique (each pair has its own study and runs)")
            first.setdefault(item.name, i)
    for i, d in enumerate(cfg.domains):
        first = {}
        for j, b in enumerate(d.benchmarks):
            if b.name in first:
                found.error(f"domains.{i}.benchmarks.{j}.name: {b.name!r} is already the name of "
                            f"domains.{i}.benchmarks.{first[b.name]}; a domain's benchmark names must be unique")
            first.setdefault(b.name, j)


def check_search(cfg: SweepConfig, found: Findings) -> None:
    """An objective the config enqueues must belong to a family it searches (else it is silently dropped)."""
    if "enqueue" not in cfg.search.model_fields_set:
        return
    for name in cfg.search.enqueue:
        family = parse_objective(name).family
        if family not in cfg.search.families:
            found.error(f"search.enqueue: {name!r} is of family {family!r}, which search.families "
                        f"({', '.join(cfg.search.families)}) leaves out")


def check_demo(cfg: SweepConfig, found: Findings) -> None:
    """`demo:` paths name what the `demo` section builds; its tasks are synthetic tasks that exist."""
    if cfg.demo is not None:
        sections = {"demo.tasks": cfg.demo.tasks, "demo.base.pretrain_tasks": cfg.demo.base.pretrain_tasks}
        for section, tasks in sections.items():
            for task in tasks:
                if task not in TASKS:
                    found.error(f"{section}: unknown synthetic task {task!r}; expected one of {', '.join(TASKS)}")
    for where, path in _paths(cfg):
        if not path.startswith(DEMO_PREFIX):
            continue
        name = path[len(DEMO_PREFIX):]
        task, _, file = name.partition("/")
        if cfg.demo is None:
            found.error(f"{where}: {path!r} needs a `demo` section in the config (it says what to build)")
        elif where.startswith("models"):
            if name != "base":
                found.error(f"{where}: {path!r}: the demo builds one model, `demo:base`")
        elif task not in cfg.demo.tasks or file not in ("train.jsonl", "test.jsonl"):
            found.error(f"{where}: {path!r}: expected demo:TASK/train.jsonl or demo:TASK/test.jsonl with TASK "
                        f"in demo.tasks ({', '.join(cfg.demo.tasks) or 'none'})")
        found.demo_paths.append(path)


def _paths(cfg: SweepConfig) -> list[tuple[str, str]]:
    """(field, path) of every model, training data and benchmark path in the config."""
    paths = [(f"models.{i}.path", m.path) for i, m in enumerate(cfg.models)]
    for i, d in enumerate(cfg.domains):
        paths.append((f"domains.{i}.train.path", d.train.path))
        paths += [(f"domains.{i}.benchmarks.{j}.path", b.path) for j, b in enumerate(d.benchmarks) if b.path]
    return paths


# ---------------------------------------------------------------- models


def model_dir_problem(path: str) -> str | None:
    """What is wrong with a local model directory, or None. A path that does not look local (absolute,
    `./`, `../`, `~`) and does not exist is a hub id: not checked here."""
    local = Path(path).expanduser()
    if not local.exists():
        return f"model directory not found: {path}" if looks_local(path) else None
    if not local.is_dir():
        return f"{path} is a file, not a model directory"
    config = local / "config.json"
    if not config.is_file():
        return f"model directory {path} holds no config.json"
    try:
        if not isinstance(json.loads(config.read_bytes()), dict):
            raise ValueError("not a JSON object")
    except ValueError as e:
        return f"{config}: not a valid model config ({describe(e)})"
    if not any((local / name).is_file() for name in TOKENIZER_FILES):
        return f"model directory {path} holds no tokenizer (none of {', '.join(TOKENIZER_FILES)})"
    return None


def is_hub_id(path: str) -> bool:
    return not path.startswith(DEMO_PREFIX) and not looks_local(path) and not Path(path).expanduser().exists()


def _has_chat_template(model_dir: Path) -> bool:
    if any((model_dir / name).is_file() for name in CHAT_TEMPLATE_FILES):
        return True
    try:
        return bool(json.loads((model_dir / "tokenizer_config.json").read_bytes()).get("chat_template"))
    except (OSError, ValueError, AttributeError):
        return False


def check_models(cfg: SweepConfig, found: Findings) -> None:
    """Local model directories exist and hold a config and a tokenizer (with a chat template where a
    domain's data is in `messages` format); hub ids are left to load time."""
    for i, m in enumerate(cfg.models):
        if m.path.startswith(DEMO_PREFIX):
            continue
        if is_hub_id(m.path):
            found.hub_ids.append(m.path)
            continue
        problem = model_dir_problem(m.path)
        if problem:
            found.error(f"models.{i}.path: {problem}")
            continue
        for j, d in enumerate(cfg.domains):
            if d.train.format == "messages" and not _has_chat_template(Path(m.path).expanduser()):
                found.error(f"domains.{j}.train.format: 'messages' needs a tokenizer with a chat template; "
                            f"models.{i} ({m.path}) has none")


# ---------------------------------------------------------------- where results go


def writable_problem(path: Path) -> str | None:
    """Why `path` cannot be a directory this process writes into, or None. Missing directories are created
    to try it and removed again, so nothing is left behind."""
    missing, existing = [], path
    while not existing.exists() and existing != existing.parent:
        missing.append(existing)
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a directory"
    created: list[Path] = []
    try:
        for d in reversed(missing):
            d.mkdir()
            created.append(d)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".alphasweep-write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        return f"cannot write in {e.filename or path}: {e.strerror or describe(e)}"
    finally:
        for d in reversed(created):
            with contextlib.suppress(OSError):  # something else wrote into it meanwhile: leave it
                d.rmdir()
    return None


def _origin(value: str | None, env: str, config_field: str, default: str) -> str:
    """Where a setting came from, as the error names it: the config field, the environment, or the default."""
    if value:
        return config_field
    return f"${env}" if os.environ.get(env) else f"{config_field} (default: {default})"


def check_output_dir(cfg: SweepConfig, found: Findings) -> None:
    """The output directory, and the checkpoint directory when it is local, can be written."""
    problem = writable_problem(cfg.out)
    if problem:
        found.error(f"output_dir: {problem}")
    root = cfg.checkpoint_root()
    if "://" in root:
        found.elsewhere.append(root)
        return
    problem = writable_problem(Path(root).expanduser())
    if problem:
        origin = _origin(cfg.storage.checkpoints, "ALPHASWEEP_STORAGE_PATH", "storage.checkpoints", "output_dir/ray")
        found.error(f"{origin}: {problem}")


# ---------------------------------------------------------------- databases and servers


def database_problem(url: str, *, connect: bool = True) -> str | None:
    """Why `url` is not a usable SQLAlchemy database, or None: the URL parses, its dialect is known, and
    (with `connect`) its driver is installed and the database opens. Creates nothing in it."""
    from sqlalchemy import create_engine, exc, text  # heavy; only URLs need it
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import NullPool

    try:
        parsed = make_url(url)
    except exc.ArgumentError:
        return f"{url!r} is not a database URL (e.g. sqlite:///path/to.db, postgresql+psycopg2://user@host/db)"
    shown = parsed.render_as_string(hide_password=True)
    try:
        dialect = parsed.get_dialect()
    except exc.NoSuchModuleError:
        return f"unknown database scheme {parsed.drivername!r} in {shown} (expected sqlite, postgresql, mysql, ...)"
    if not connect:
        return None
    try:
        dialect.import_dbapi()
    except ImportError as e:
        return (f"{shown}: its driver {e.name or parsed.drivername!r} is not installed; install it, or name an "
                f"installed driver in the URL (e.g. postgresql+psycopg2://)")
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_problem(parsed.database, shown)
    args = {"connect_timeout": CONNECT_TIMEOUT_S} if parsed.get_backend_name() in ("postgresql", "mysql") else {}
    engine = create_engine(parsed, poolclass=NullPool, connect_args=args)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except exc.DBAPIError as e:
        return f"cannot open {shown}: {describe(e.orig or e).partition(': ')[2] or describe(e)}"
    finally:
        engine.dispose()
    return None


def _sqlite_problem(database: str | None, shown: str) -> str | None:
    """An existing sqlite file must open (read-only); a new one needs a directory it can be created in."""
    if not database or database == ":memory:":
        return None
    path = Path(database).expanduser()
    if not path.exists():
        problem = writable_problem(path.parent)
        return f"cannot create {shown}: {problem}" if problem else None
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as e:
        return f"cannot open {shown}: {e}"
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as e:
        return f"cannot open {shown}: {e}"
    finally:
        conn.close()
    return None


def server_problem(uri: str) -> str | None:
    """Why an MLflow tracking server does not answer its health check, or None."""
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=CONNECT_TIMEOUT_S) as r:
            r.read()
    except OSError as e:
        return f"tracking server {uri} is unreachable: {getattr(e, 'reason', None) or describe(e)}"
    return None


def check_optuna_storage(cfg: SweepConfig, found: Findings, *, connect: bool = True) -> None:
    """The Optuna storage URL names a known database that opens (`connect`: else only the scheme)."""
    problem = database_problem(cfg.optuna_storage(), connect=connect)
    if problem:
        origin = _origin(cfg.storage.optuna, "ALPHASWEEP_OPTUNA_STORAGE", "storage.optuna", "sqlite in output_dir")
        found.error(f"{origin}: {problem}")


def check_tracking(cfg: SweepConfig, found: Findings, *, connect: bool = True) -> None:
    """The MLflow tracking URI: a server that answers, a database that opens, or an allowed file store."""
    uri = cfg.mlflow_uri()
    origin = _origin(cfg.tracking.mlflow_uri, "MLFLOW_TRACKING_URI", "tracking.mlflow_uri", "sqlite in output_dir")
    scheme = urlparse(uri).scheme
    if scheme in ("http", "https"):
        problem = server_problem(uri) if connect else None
    elif scheme.partition("+")[0] in MLFLOW_DATABASES:
        problem = database_problem(uri, connect=connect)
    elif scheme in ("databricks", "databricks-uc", "uc"):
        found.elsewhere.append(uri)
        return
    elif scheme in ("file", "") or len(scheme) == 1:  # a plain path, or a Windows drive letter
        problem = ("MLflow 3.17 refuses a file store (./mlruns, file:) unless MLFLOW_ALLOW_FILE_STORE=true; "
                   "use sqlite:///path/mlflow.db or a tracking server"
                   if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() != "true" else None)
    else:
        problem = (f"unknown tracking URI scheme {scheme!r} in {uri} (expected http(s)://, "
                   f"{', '.join(s + '://' for s in MLFLOW_DATABASES)} or databricks)")
    if problem:
        found.error(f"{origin}: {problem}")


def check_url_schemes(cfg: SweepConfig, found: Findings) -> None:
    """For a sweep that runs elsewhere (`submit`): the storage and tracking URLs are of a known kind."""
    check_optuna_storage(cfg, found, connect=False)
    check_tracking(cfg, found, connect=False)


# ---------------------------------------------------------------- data and benchmarks


def _read(path: str, where: str, found: Findings, *, split: str, subset: str | None, kind: str) -> list[Row] | None:
    """The rows of a local file (None after reporting why it cannot be read, or for a hub id)."""
    if path.startswith(DEMO_PREFIX):
        return None
    if is_hub_id(path):
        found.hub_ids.append(path)
        return None
    try:
        return load_rows(path, split=split, subset=subset, what=kind)
    except DataError as e:  # it names the file
        found.error(str(e))
    except OSError as e:
        found.error(f"{where}: {describe(e).partition(': ')[2]}")
    return None


def data_problems(rows: list[Row], spec: DataSpec, source: str) -> tuple[list[str], int]:
    """The errors of an SFT file's rows (file, line or row, field, expected, found) and its usable rows."""
    errors, usable = [], 0
    for where, row in rows:
        try:
            check_sft_row(row, spec)
            usable += 1
        except DataError as e:
            if not spec.skip_bad_rows:
                errors.append(f"{source}: {where}: {e}")
    if not usable and not errors:
        errors.append(f"{source}: no usable rows (every row is bad and skip_bad_rows is set)")
    return errors, usable


def _report_rows(errors: list[str], source: str, found: Findings) -> None:
    for error in errors[:ROW_ERRORS_LISTED]:
        found.error(error)
    if len(errors) > ROW_ERRORS_LISTED:
        found.error(f"{source}: {len(errors) - ROW_ERRORS_LISTED} more bad row(s) not listed")


def check_data(spec: DataSpec, where: str, found: Findings) -> None:
    """Every row of one local SFT file holds what its format needs (`where` names the setting)."""
    rows = _read(spec.path, where, found, split=spec.split, subset=spec.subset, kind="data")
    if rows is None:
        return
    errors, _ = data_problems(rows, spec, spec.path)
    _report_rows(errors, spec.path, found)
    found.data_files += 1
    found.rows += len(rows)


def check_train_data(cfg: SweepConfig, found: Findings) -> None:
    """Every row of every domain's local training file holds what its format needs."""
    for i, d in enumerate(cfg.domains):
        check_data(d.train, f"domains.{i}.train.path", found)


def check_benchmark_specs(cfg: SweepConfig, found: Findings) -> None:
    """Benchmark names against the registry: a built-in, or a file with a format or a scorer."""
    for i, d in enumerate(cfg.domains):
        for j, b in enumerate(d.benchmarks):
            try:
                resolve_spec(b)
            except ValueError as e:
                found.error(f"domains.{i}.benchmarks.{j}: {e}")


def benchmark_problems(rows: list[Row], spec: BenchmarkSpec, source: str) -> list[str]:
    """The errors of a benchmark file's rows, found by the registry's own row reading."""
    fmt, _ = benchmark_format(spec)
    errors = []
    for where, row in rows:
        try:
            row_item(spec, fmt, row)
        except ValueError as e:
            errors.append(f"benchmark {spec.name!r} ({source}): {where}: {e}")
    return errors


def check_benchmark_files(cfg: SweepConfig, found: Findings) -> None:
    """Every row of every local benchmark file gives a prompt and a gold answer; hub ones are left to load time."""
    for i, d in enumerate(cfg.domains):
        for j, b in enumerate(d.benchmarks):
            try:
                spec = resolve_spec(b)
            except ValueError:
                continue  # reported by check_benchmark_specs
            source, split, subset = benchmark_source(spec)
            rows = _read(source, f"domains.{i}.benchmarks.{j}.path", found, split=split, subset=subset,
                         kind="benchmark")
            if rows is None:
                continue
            _report_rows(benchmark_problems(rows, spec, source), source, found)
            found.benchmark_rows += len(rows)


# ---------------------------------------------------------------- what each command checks

# Cheap and fundamental first: without --all the first error stops validation.
SWEEP_CHECKS: tuple[Check, ...] = (check_names, check_search, check_demo, check_benchmark_specs, check_models,
                                   check_output_dir, check_optuna_storage, check_tracking, check_train_data,
                                   check_benchmark_files)
# `train`: one fine-tune, no Optuna, no MLflow, no evaluation.
TRAIN_CHECKS: tuple[Check, ...] = (check_names, check_demo, check_models, check_output_dir, check_train_data)
# `submit`: paths, databases and servers are the cluster's; only the config and URL schemes are checked here.
CLUSTER_CHECKS: tuple[Check, ...] = (check_names, check_search, check_demo, check_benchmark_specs, check_url_schemes)
