"""The `alphasweep` command: train, eval, probe, sweep, report, dashboard, submit, validate, data.

User errors (bad config, missing file, unknown objective) print one line and exit 2, no traceback; that
holds for a user error raised inside a Ray task or actor too. `sweep`, `train` and `submit` run the
checks of `alphasweep validate` first, before Ray starts and before anything is written.
Each command imports the heavy modules it runs (torch, transformers, Ray, MLflow) in its own body, after
those checks, so that `alphasweep --help`, `validate` and a rejected input stay quick and never import torch.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict
from functools import wraps
from pathlib import Path

import click
import pydantic

from alphasweep import validate as checks
from alphasweep.config import ConfigError, DataSpec, load_config
from alphasweep.objectives import parse_objective

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"


def _remote_cause(e: BaseException) -> BaseException:
    """The user's own error behind a Ray task's or actor's wrapper (`ray::probe_capability() ...` and the
    remote traceback). Ray is only asked when it is loaded."""
    ray_exceptions = sys.modules.get("ray.exceptions")
    while ray_exceptions and isinstance(e, ray_exceptions.RayTaskError) and e.cause is not None:
        e = e.cause
    return e


def _one_line(e: BaseException) -> str:
    """An error as one line: its message's first line, pydantic's first error, or its type when it says nothing."""
    if isinstance(e, pydantic.ValidationError) and e.errors():
        err = e.errors()[0]
        return f"{e.title}: {'.'.join(map(str, err['loc']))}: {err['msg']}"
    return next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)


def _user_errors(fn):
    """Turn the errors a user can fix (ConfigError and DataError are ValueErrors) into one line on stderr and
    exit code 2."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ValueError, FileNotFoundError) as e:
            click.echo(f"error: {_one_line(_remote_cause(e))}", err=True)
            sys.exit(2)

    return wrapper


def _init_ray(address: str | None) -> None:
    """Attach to `address` (or $RAY_ADDRESS), else start a local instance with the dashboard."""
    import ray

    # A set MLFLOW_EXPERIMENT_ID would reach every worker of a local cluster started here (docs/upstream.md).
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
    else:
        ray.init(include_dashboard=True, resources={"TRAIN_DRIVER": 64}, log_to_driver=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="alphasweep")
def main() -> None:
    """Find the best SFT objective (NLL, f_alpha, thresholds) per (model, domain) pair on Ray."""


@main.command()
@click.option("--config", "config_path", required=True, type=click.Path(), help="Sweep/train YAML config.")
@click.option("--objective", default="original", show_default=True,
              help="Objective name, e.g. original, p, GeneralFamily-4, OnlyTopLogP-0.5.")
@click.option("--model", "model_name", default=None, help="Model name from the config (default: the first).")
@click.option("--domain", "domain_name", default=None, help="Domain name from the config (default: the first).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value, e.g. --set train.steps=50 (repeatable).")
@click.option("--address", default=None, help="Ray cluster address (default: a local instance).")
@_user_errors
def train(config_path, objective, model_name, domain_name, overrides, address):
    """Fine-tune one model on one domain with one objective (a Ray Train run)."""
    cfg = load_config(config_path, list(overrides))
    obj = parse_objective(objective)
    model = _pick(cfg.models, model_name, "model")
    domain = _pick(cfg.domains, domain_name, "domain")
    checks.validate(cfg.model_copy(update={"models": [model], "domains": [domain]}), checks.TRAIN_CHECKS)
    from alphasweep.workers.progress import PrintProgress  # torch and Ray: after the checks
    from alphasweep.workers.setup import TrainJob
    from alphasweep.workers.trainer import build_trainer, final_checkpoint_path

    _init_ray(address)
    name = f"train-{model.name}-{domain.name}-{obj.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    settings = cfg.train_for(domain, model)
    length = f"{settings.steps} steps" if settings.steps else f"{settings.epochs:g} epoch(s)"
    click.echo(f"training {model.name} on {domain.name} with {obj.name} ({length}, {settings.workers} worker(s))")
    job = TrainJob(model_path=model.path, objective=obj, data=cfg.data_for(model, domain), train=settings)
    trainer = build_trainer(job, storage_path=cfg.checkpoint_root(), name=name, callbacks=[PrintProgress("  ")])
    result = trainer.fit()
    click.echo(f"final checkpoint: {final_checkpoint_path(result)}")


@main.command()
@click.argument("config_path", required=False, type=click.Path())
@click.option("--resume", is_flag=True,
              help="Continue an interrupted sweep: finished trials are kept, interrupted ones retried.")
@click.option("--extend", type=click.IntRange(min=1), default=None, metavar="N",
              help="Run N (>= 1) more trials per pair than are done.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config value.")
@click.option("--address", default=None, help="Ray cluster address (default: a local instance).")
@click.option("--rebuild", is_flag=True, help="Rebuild the demo's tiny base models (ignore the cache).")
@click.option("--verbose", "-v", is_flag=True,
              help="Show Ray's, Tune's and the libraries' output on the console (by default it goes to "
                   "OUTPUT_DIR/logs/sweep.log).")
@_user_errors
def sweep(config_path, resume, extend, overrides, address, rebuild, verbose):
    """Search the best objective per (model, domain) pair. No CONFIG: the embedded demo.

    The Optuna storage is the record of a sweep: running the same config again (or with --resume)
    continues it and runs only the trials its budget still lacks. The checks of `alphasweep validate`
    run first: a bad input stops the sweep before Ray starts and before anything is written.
    """
    cfg = load_config(config_path or DEMO_CONFIG, list(overrides))
    checks.validate(cfg)
    import ray  # Ray, MLflow, torch: after the checks
    from mlflow import MlflowClient

    from alphasweep.console import quiet_console
    from alphasweep.orchestrator.report import build_report, format_table, plot_report
    from alphasweep.orchestrator.sweep import run_sweep
    from alphasweep.orchestrator.tracking import ui_command

    started = time.time()
    log_path = cfg.out / "logs" / "sweep.log"
    with quiet_console(log_path, verbose=verbose) as log:
        log(f"sweep {cfg.name}: {len(cfg.pairs())} pair(s), {cfg.budget.trials_per_pair} trials each"
            + ("" if verbose else f"; Ray's and the libraries' output: {_shown(log_path)}"))
        if cfg.demo:
            from alphasweep.demo import prepare_demo  # torch: only to build the demo

            cfg = prepare_demo(cfg, rebuild=rebuild, log=log)
        _init_ray(address)
        try:
            run_sweep(cfg, resume=resume, extend=extend or 0, log=log)
            report = build_report(cfg)
            plots = plot_report(cfg, report, cfg.out / "plots")
            exp = MlflowClient(cfg.mlflow_uri()).get_experiment_by_name(cfg.name)
        finally:
            ray.shutdown()  # here, so that its last words go to the log too
    serve, url = ui_command(cfg.mlflow_uri(), exp.experiment_id)
    click.echo("\n" + format_table(report, objectives=False))
    click.echo(f"each pair's objectives with their intervals: alphasweep report {_shown(cfg.out)}")
    click.echo(f"\nfinished in {time.time() - started:.0f} s; full log: {_shown(log_path)}")
    click.echo(f"plots:            {', '.join(_shown(p) for p in plots)}")
    click.echo(f"MLflow:           {serve or 'tracking server ' + cfg.mlflow_uri()}")
    click.echo(f"open the UI:      {url}")
    click.echo(f"optuna-dashboard: alphasweep dashboard {_shown(cfg.out)}   (then http://127.0.0.1:8080)")


def _shown(path: Path) -> str:
    """A path as the user would type it: relative to the current directory when it lies below it."""
    path = Path(path).resolve()
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


@main.command()
@click.argument("config_path", required=False, type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config value.")
@_user_errors
def report(config_path, as_json, overrides):
    """Best objective per pair, scores, and plots of a sweep (CONFIG or its output dir)."""
    from alphasweep.orchestrator.report import build_report, format_table, plot_report

    cfg = load_config(_config_of(config_path), list(overrides))
    rep = build_report(cfg)
    if as_json:
        click.echo(json.dumps(rep, indent=2))
        return
    click.echo(format_table(rep))
    for p in plot_report(cfg, rep, cfg.out / "plots"):
        click.echo(f"plot: {p}")


def _config_of(path: str | None) -> Path:
    """A config file, or a sweep output directory (which holds the config it ran with)."""
    if path is None:
        return DEMO_CONFIG
    p = Path(path)
    return p / "sweep.yaml" if p.is_dir() else p


@main.command()
@click.argument("sweep_path", required=False, type=click.Path())
@click.option("--port", type=int, default=8080, show_default=True, help="Port on 127.0.0.1.")
@_user_errors
def dashboard(sweep_path, port):
    """Serve optuna-dashboard on a sweep's Optuna storage (OUTPUT_DIR or CONFIG; no argument: the demo's)."""
    from optuna_dashboard import run_server

    cfg = load_config(_config_of(sweep_path))
    storage = cfg.optuna_storage()
    if storage.startswith("sqlite:///") and not Path(storage.removeprefix("sqlite:///")).exists():
        raise ConfigError(f"{storage}: no Optuna storage there yet; run the sweep first")
    click.echo(f"optuna-dashboard for sweep {cfg.name!r} on http://127.0.0.1:{port}/ (Ctrl-C to stop)")
    run_server(storage, host="127.0.0.1", port=port)


@main.command()
@click.option("--model", "model_path", required=True,
              help="Base model: a local directory (/..., ./..., ~/...) or a hub id, e.g. Qwen/Qwen2.5-Math-1.5B.")
@click.option("--data", "data_path", required=True, help="SFT data: .jsonl/.json/.parquet file or hub id.")
@click.option("--format", "fmt", type=click.Choice(["prompt_completion", "messages"]), default="prompt_completion",
              show_default=True)
@click.option("--prompt-field", default="prompt", show_default=True)
@click.option("--completion-field", default="completion", show_default=True)
@click.option("--sample", type=click.IntRange(min=1), default=256, show_default=True, help="Rows to probe.")
@click.option("--max-length", type=click.IntRange(min=8), default=256, show_default=True,
              help="Tokens per row (prompt and completion).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@_user_errors
def probe(model_path, data_path, fmt, prompt_field, completion_field, sample, max_length, as_json):
    """Measure the base model's token probabilities on SFT data: its place on the continuum."""
    problem = checks.model_dir_problem(model_path)
    if problem:
        raise ConfigError(f"--model: {problem}")
    spec = DataSpec(path=data_path, format=fmt, prompt_field=prompt_field, completion_field=completion_field)
    checks.check_data(spec, "--data", checks.Findings())
    from alphasweep.probe import probe_capability  # torch: after the checks

    result = probe_capability(model_path, spec, max_length=max_length, sample=sample)
    if as_json:
        click.echo(json.dumps(asdict(result), indent=2))
        return
    click.echo(f"tokens probed      {result.tokens}")
    click.echo(f"mean p             {result.mean_p:.4f}")
    click.echo(f"median p           {result.median_p:.4f}  (quartiles {result.q25_p:.4f} .. {result.q75_p:.4f})")
    click.echo(f"share p > 0.5      {result.share_above_half:.4f}")
    click.echo(f"mean -log p        {result.mean_nll:.4f}")
    click.echo(f"continuum          {result.continuum}")
    click.echo(f"try first          {', '.join(result.suggestions)}")


@main.command("eval")
@click.option("--checkpoint", required=True, help="Checkpoint directory (save_pretrained) or hub id.")
@click.option("--benchmarks", required=True,
              help="Comma-separated built-in names (gsm8k, math500, minerva_math, medqa, figfont, ...) or files.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most N (>= 1) rows per benchmark.")
@click.option("--backend", type=click.Choice(["auto", "vllm", "hf"]), default="auto", show_default=True)
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=None,
              help="Generation length (default: the eval config's).")
@click.option("--out", "out_path", type=click.Path(), default="eval_records.jsonl", show_default=True,
              help="Where to write the per-sample records.")
@_user_errors
def eval_(checkpoint, benchmarks, limit, backend, max_new_tokens, out_path):
    """Score a checkpoint on benchmarks; prints a table and writes per-sample records as jsonl."""
    problem = checks.writable_problem(Path(out_path).expanduser().resolve().parent)
    if problem:
        raise ConfigError(f"--out: {problem}")
    from alphasweep.evaluation.runner import format_table, run_eval  # torch: after the checks

    scores = run_eval(checkpoint, [b.strip() for b in benchmarks.split(",") if b.strip()], limit=limit,
                      backend=backend, max_new_tokens=max_new_tokens, out_path=out_path)
    click.echo(format_table(scores))
    click.echo(f"records: {out_path}")


@main.command()
@click.argument("config_path", required=False, type=click.Path())
@click.option("--address", default=None, help="Ray dashboard address, e.g. http://127.0.0.1:8265 ($RAY_ADDRESS).")
@click.option("--follow", is_flag=True, help="Stream the job's logs until it ends.")
@click.option("--status", "status_of", default=None, metavar="JOB", help="Print a job's status and exit.")
@click.option("--stop", "stop_job", default=None, metavar="JOB", help="Stop a job and exit.")
@click.option("--ship-project/--no-ship-project", default=True, show_default=True,
              help="Send this alphasweep package with the job (not needed when the image has it).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config value.")
@_user_errors
def submit(config_path, address, follow, status_of, stop_job, ship_project, overrides):
    """Run a sweep on a Ray cluster through the Jobs API."""
    from alphasweep.orchestrator import submit as jobs

    address = jobs.require_address(address or os.environ.get("RAY_ADDRESS"))
    try:
        if status_of:
            state, message = jobs.status(address, status_of)
            lines = message.splitlines()
            cause = next((line for line in reversed(lines) if line.startswith("error:")), "")  # the sweep's own
            brief = " | ".join(dict.fromkeys(line for line in (lines[:1] + [cause]) if line))
            click.echo(f"{status_of}: {state}" + (f" ({brief})" if brief else ""))
            sys.exit(0 if state in ("SUCCEEDED", "RUNNING", "PENDING") else 1)
        if stop_job:
            click.echo(f"{stop_job}: {'stopping' if jobs.stop(address, stop_job) else 'already finished'}")
            return
        if not config_path:
            raise ConfigError("submit needs a CONFIG file (or --status JOB / --stop JOB)")
        cfg = load_config(config_path, list(overrides))
        checks.validate(cfg, checks.CLUSTER_CHECKS)  # its paths and servers are the cluster's: checked there
        env = {k: os.environ[k] for k in jobs.PASSED_ENV if k in os.environ}
        job_id = jobs.submit(cfg, Path(config_path), address, ship_project=ship_project, env=env,
                             overrides=list(overrides))
        click.echo(f"submitted {job_id}")
        click.echo(f"  status: alphasweep submit --address {address} --status {job_id}")
        if follow:
            final = jobs.follow(address, job_id, echo=click.echo)
            click.echo(f"{job_id}: {final}")
            sys.exit(0 if final == "SUCCEEDED" else 1)
    except jobs.SubmitError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)


@main.command("validate")
@click.argument("config_path", required=False, type=click.Path())
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config value.")
@click.option("--all", "all_errors", is_flag=True,
              help=f"List every error found, not only the first (up to {checks.ROW_ERRORS_LISTED} bad rows a file).")
@click.option("--cluster", is_flag=True,
              help="Check as `submit` does: paths, databases and servers are the cluster's, so only the config, "
                   "benchmark names and URL schemes are checked here.")
@_user_errors
def validate_(config_path, overrides, all_errors, cluster):
    """Check a sweep config and all it names, without training and without starting Ray. No CONFIG: the demo's.

    \b
    Checked: the config's fields and cross-field rules (unique model, domain and
    benchmark names); every row of every local data and benchmark file (file, line or
    row, field, what was expected and what was found); benchmark names against the
    registry; local model directories (a config.json and a tokenizer); the Optuna
    storage and MLflow tracking URLs (scheme, server, database); that the output
    directory can be written. Nothing is created or changed.

    \b
    Left to load time: hub ids (models, datasets, built-in benchmarks without a path),
    which need the network. A path that looks local (/..., ./..., ../..., ~/..., a
    .jsonl/.json/.parquet file, or more than one /) and does not exist is reported
    missing; any other name that does not exist is taken for a hub id (name or org/name).
    `demo:` paths are built when the sweep starts.

    Prints a one-line summary and exits 0, or prints one line per error on stderr and exits 2.
    `sweep`, `train` and `submit` run the same checks first.
    """
    try:
        cfg = load_config(config_path or DEMO_CONFIG, list(overrides))
        scope = checks.CLUSTER_CHECKS if cluster else checks.SWEEP_CHECKS
        found = checks.validate(cfg, scope, all_errors=all_errors)
    except ConfigError as e:
        if not all_errors:
            raise
        for line in e.errors:
            click.echo(f"error: {line}", err=True)
        sys.exit(2)
    click.echo(found.summary())


@main.group("data")
def data_group() -> None:
    """Build a domain's SFT and evaluation files locally (no hub needed)."""


@data_group.command("figfont")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--n-train", default=40_000, show_default=True, type=click.IntRange(min=1),
              help="Training puzzles (the paper: 40000).")
@click.option("--n-test", default=5_000, show_default=True, type=click.IntRange(min=1),
              help="Test puzzles, none of them a training puzzle (the paper: 5000).")
@click.option("--seed", default=42, show_default=True, type=int, help="reasoning-gym seed (the paper: 42).")
@_user_errors
def data_figfont(out_dir, n_train, n_test, seed):
    """The paper's figlet-font puzzles (reasoning-gym's figlet_font): OUT_DIR/train.jsonl and test.jsonl.

    The rows have the fields configs/paper/figfont.yaml reads from the hub's gaotang/figlet_font, so the
    preset runs on them with --set domains.0.train.path=OUT_DIR/train.jsonl and
    --set domains.0.benchmarks.0.path=OUT_DIR.
    """
    from alphasweep.figfont import write_figfont

    train_path, test_path = write_figfont(out_dir, n_train=n_train, n_test=n_test, seed=seed)
    click.echo(f"wrote {n_train} training puzzles to {train_path} and {n_test} test puzzles to {test_path}")


def _pick(items, name, kind):
    if name is None:
        return items[0]
    for item in items:
        if item.name == name:
            return item
    raise ConfigError(f"no {kind} named {name!r}; the config has {', '.join(i.name for i in items)}")


if __name__ == "__main__":
    main()
