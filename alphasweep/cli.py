"""The `alphasweep` command: train, eval, probe, sweep, report, submit.

User errors (bad config, missing file, unknown objective) print one line and exit 2, no traceback.
Each command imports the heavy modules it runs (torch, transformers, Ray, MLflow) in its own body, so
that `alphasweep --help` and reading a config stay quick and never import torch.
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

from alphasweep.config import ConfigError, DataSpec, check_local_paths, load_config
from alphasweep.objectives import parse_objective
from alphasweep.rows import DataError

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"


def _user_errors(fn):
    """Turn the errors a user can fix into one line on stderr and exit code 2."""
    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ConfigError, DataError, ValueError, FileNotFoundError) as e:
            click.echo(f"error: {e}", err=True)
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
    from alphasweep.workers.progress import PrintProgress
    from alphasweep.workers.trainer import build_trainer, final_checkpoint_path

    cfg = load_config(config_path, list(overrides))
    obj = parse_objective(objective)
    model = _pick(cfg.models, model_name, "model")
    domain = _pick(cfg.domains, domain_name, "domain")
    check_local_paths(cfg)
    _init_ray(address)
    name = f"train-{model.name}-{domain.name}-{obj.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    click.echo(f"training {model.name} on {domain.name} with {obj.name} ({cfg.train_for(domain).steps} steps, "
               f"{cfg.train.workers} worker(s))")
    trainer = build_trainer(model_path=model.path, data=domain.train, train=cfg.train_for(domain), objective=obj.name,
                            storage_path=cfg.checkpoint_root(), name=name, callbacks=[PrintProgress("  ")])
    result = trainer.fit()
    click.echo(f"final checkpoint: {final_checkpoint_path(result)}")


@main.command()
@click.argument("config_path", required=False, type=click.Path())
@click.option("--resume", is_flag=True,
              help="Continue an interrupted sweep: finished trials are kept, interrupted ones retried.")
@click.option("--extend", type=int, default=0, metavar="N", help="Run N more trials per pair than are done.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config value.")
@click.option("--address", default=None, help="Ray cluster address (default: a local instance).")
@click.option("--rebuild", is_flag=True, help="Rebuild the demo's tiny base models (ignore the cache).")
@_user_errors
def sweep(config_path, resume, extend, overrides, address, rebuild):
    """Search the best objective per (model, domain) pair. No CONFIG: the embedded demo.

    The Optuna storage is the record of a sweep: running the same config again (or with --resume)
    continues it and runs only the trials its budget still lacks.
    """
    from alphasweep.demo import prepare_demo
    from alphasweep.orchestrator.report import build_report, format_table, plot_report
    from alphasweep.orchestrator.sweep import run_sweep
    from alphasweep.orchestrator.tracking import check_reachable

    cfg = load_config(config_path or DEMO_CONFIG, list(overrides))
    if cfg.demo:
        cfg = prepare_demo(cfg, rebuild=rebuild, log=_log)
    check_local_paths(cfg)
    check_reachable(cfg.mlflow_uri())
    started = time.time()
    _init_ray(address)
    run_sweep(cfg, resume=resume, extend=extend, log=_log)
    report = build_report(cfg)
    plots = plot_report(cfg, report, cfg.out / "plots")
    click.echo("\n" + format_table(report))
    click.echo(f"\nfinished in {time.time() - started:.0f} s")
    click.echo(f"plots:          {', '.join(str(p) for p in plots)}")
    click.echo(f"MLflow:         {cfg.mlflow_uri()}")
    click.echo(f"Optuna storage: {cfg.optuna_storage()}")
    if cfg.mlflow_uri().startswith("sqlite"):
        click.echo(f"open the UI:    mlflow ui --backend-store-uri {cfg.mlflow_uri()}")
    else:
        click.echo(f"open the UI:    {cfg.mlflow_uri()}")


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
@click.option("--model", "model_path", required=True, help="Base model: local directory or hub id.")
@click.option("--data", "data_path", required=True, help="SFT data: .jsonl/.json/.parquet file or hub id.")
@click.option("--format", "fmt", type=click.Choice(["prompt_completion", "messages"]), default="prompt_completion",
              show_default=True)
@click.option("--prompt-field", default="prompt", show_default=True)
@click.option("--completion-field", default="completion", show_default=True)
@click.option("--sample", default=256, show_default=True, help="Rows to probe.")
@click.option("--max-length", default=256, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@_user_errors
def probe(model_path, data_path, fmt, prompt_field, completion_field, sample, max_length, as_json):
    """Measure the base model's token probabilities on SFT data: its place on the continuum."""
    from alphasweep.probe import probe_capability

    spec = DataSpec(path=data_path, format=fmt, prompt_field=prompt_field, completion_field=completion_field)
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
@click.option("--benchmarks", required=True, help="Comma-separated names (gsm8k,math500,aime24,amc23) or files.")
@click.option("--limit", type=int, default=None, help="At most N rows per benchmark.")
@click.option("--backend", type=click.Choice(["auto", "vllm", "hf"]), default="auto", show_default=True)
@click.option("--max-new-tokens", type=int, default=None, help="Generation length (default: the eval config's).")
@click.option("--out", "out_path", type=click.Path(), default="eval_records.jsonl", show_default=True,
              help="Where to write the per-sample records.")
@_user_errors
def eval_(checkpoint, benchmarks, limit, backend, max_new_tokens, out_path):
    """Score a checkpoint on benchmarks; prints a table and writes per-sample records as jsonl."""
    from alphasweep.evaluation.runner import format_table, run_eval

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


def _log(msg: str) -> None:
    click.echo(f"{time.strftime('%H:%M:%S')} {msg}")


def _pick(items, name, kind):
    if name is None:
        return items[0]
    for item in items:
        if item.name == name:
            return item
    raise ConfigError(f"no {kind} named {name!r}; the config has {', '.join(i.name for i in items)}")


if __name__ == "__main__":
    main()
