"""Typed sweep configuration: one shape for `train`, `sweep` and `submit`, loaded from YAML.

Every user error becomes a `ConfigError` whose one-line message names the file and the field, so the
CLI can print it without a traceback before any trial starts.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from alphasweep.objectives import FAMILIES, SPECS, parse_objective

DEMO_PREFIX = "demo:"  # `demo:base`, `demo:TASK/train.jsonl`: what the embedded demo builds (demo.py)


class ConfigError(ValueError):
    """A user error in a config file or option: printed as one line, exit code 2.

    `errors` holds every error found, one line each, when there were several (`alphasweep validate --all`)."""

    def __init__(self, message: str, errors: list[str] | None = None):
        super().__init__(message)
        self.errors = errors or [message]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _check_prompt_template(template: str) -> str:
    try:
        template.format(prompt="")
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(f"not a format string over {{prompt}} alone ({type(e).__name__}: {e}); "
                         "write literal braces as {{ and }}") from None
    if "{prompt}" not in template:
        raise ValueError("must contain {prompt}, where the prompt text goes")
    return template


PromptTemplate = Annotated[str, AfterValidator(_check_prompt_template)]


class ModelSpec(_Strict):
    name: str
    path: str  # local directory saved with save_pretrained, or a hub id
    # This model's own training settings (e.g. its learning rate), applied after the domain's train_overrides.
    train_overrides: dict[str, Any] = Field(default_factory=dict)
    # How this model reads a prompt: a format string around {prompt}, used for its training prompts and its
    # benchmark questions in place of the tokenizer's chat template (the paper's per-model prompt formats).
    # Leave the BOS token out: the tokenizer adds it where it does, in training as in evaluation.
    prompt_template: PromptTemplate | None = None


class DataSpec(_Strict):
    """SFT data: a hub id (`datasets.load_dataset`) or a local .jsonl/.json/.parquet file. Field names may be
    dotted paths into nested columns (`extra_info.question`)."""

    path: str
    format: Literal["prompt_completion", "messages"] = "prompt_completion"
    prompt_field: str = "prompt"
    completion_field: str = "completion"
    messages_field: str = "messages"
    # The prompt is `prompt_template.format(prompt=<prompt field>)` (set per model: ModelSpec.prompt_template)
    prompt_template: PromptTemplate | None = None
    split: str = "train"
    subset: str | None = None
    skip_bad_rows: bool = False
    heldout: int = Field(64, ge=0, description="rows held out for the held-out NLL signal")


class BenchmarkSpec(_Strict):
    """One benchmark: a built-in name (`alphasweep.evaluation.benchmarks.BUILTIN_BENCHMARKS`) or a user's file
    with its fields."""

    name: str
    path: str | None = None  # local jsonl/json/parquet or hub id; None: the built-in's default
    format: str | None = None  # built-in format name; None: the name if built in, else `custom`
    split: str = "test"
    subset: str | None = None
    prompt_field: str | None = None
    answer_field: str | None = None
    scorer: Literal["math", "choice", "exact", "exact_similarity"] | None = None
    template: str | None = None  # Python format string over the row's fields, e.g. "Q: {question}\nA:"
    # None: the format decides (math/choice: the tokenizer's chat template; exact: the raw prompt)
    use_chat_template: bool | None = None
    # The model's prompt format (set per model: ModelSpec.prompt_template): the bare question (with its
    # options) goes into {prompt}, in place of the format's instruction and the chat template.
    prompt_template: PromptTemplate | None = None
    # Which of the scorer's metrics is this benchmark's score (e.g. `similarity`); None: its first
    metric: str | None = None
    limit: int | None = Field(None, ge=1)


class DomainSpec(_Strict):
    name: str
    train: DataSpec
    benchmarks: list[BenchmarkSpec] = Field(min_length=1)
    train_overrides: dict[str, Any] = Field(default_factory=dict)  # e.g. {steps: 150}: this domain's fine-tune


class RangeSpec(_Strict):
    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> RangeSpec:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log-scaled range needs low > 0")
        return self


class SearchSpec(_Strict):
    families: list[str] = Field(default_factory=lambda: ["nll", "p", "general"], min_length=1)
    alpha: RangeSpec = RangeSpec(low=0.05, high=16.0, log=True)
    threshold: RangeSpec = RangeSpec(low=0.05, high=0.9)
    learning_rate: RangeSpec | None = None  # None: train.learning_rate for every trial
    enqueue: list[str] = Field(default_factory=lambda: ["original", "p"])
    probe_warm_start: bool = True
    seed: int = 0

    @field_validator("families")
    @classmethod
    def _known_families(cls, families: list[str]) -> list[str]:
        unknown = [f for f in families if f not in FAMILIES]
        if unknown:
            raise ValueError(f"unknown family {unknown[0]!r}; expected one of {', '.join(FAMILIES)}")
        return families

    @field_validator("enqueue")
    @classmethod
    def _known_objectives(cls, names: list[str]) -> list[str]:
        return [parse_objective(n).name for n in names]

    @field_validator("alpha", "threshold")
    @classmethod
    def _inside_family_ranges(cls, r: RangeSpec, info: ValidationInfo) -> RangeSpec:
        """A searched range lies inside the range of every family that takes the parameter (objective registry)."""
        for spec in SPECS.values():
            if spec.field == info.field_name and not (r.low in spec.range and r.high in spec.range):
                raise ValueError(f"{info.field_name} must lie in {spec.range}")
        return r


class BudgetSpec(_Strict):
    trials_per_pair: int = Field(8, ge=1)
    max_concurrent: int = Field(1, ge=1)


class SchedulerSpec(_Strict):
    kind: Literal["none", "asha"] = "none"
    grace_steps: int = Field(50, ge=1)
    reduction_factor: int = Field(2, ge=2)
    # What ASHA compares at each rung (reported every train.eval_every steps): held-out NLL, or the mean
    # accuracy on the first `signal_limit` items of each of the pair's benchmarks, generated in the worker.
    signal: Literal["heldout_nll", "benchmark"] = "heldout_nll"
    signal_limit: int = Field(32, ge=1)


DEFAULT_STEPS, DEFAULT_WARMUP_STEPS = 300, 10


# Settings given one way or the other, never both: the second (validated after the first) -> the first.
_EITHER = {"epochs": "steps", "warmup_ratio": "warmup_steps"}


class TrainConfig(_Strict):
    """How one fine-tune trains. Batch geometry: `batch_size` sequences per optimizer step over all workers
    (the global batch); each worker takes `batch_size / workers` of them, in micro-batches of
    `micro_batch_size` with gradient accumulation over `batch_size / (workers x micro_batch_size)` of them."""

    steps: int | None = Field(None, ge=1, description="optimizer steps; exactly one of steps and epochs (neither: 300)")
    epochs: float | None = Field(
        None, gt=0, description="passes over the training rows: steps = ceil(epochs x the steps one pass takes, "
        "i.e. training rows // batch_size), known once the trial has loaded its data")
    batch_size: int = Field(32, ge=1, description="sequences per optimizer step over all workers (the global batch)")
    micro_batch_size: int | None = Field(
        None, ge=1, description="sequences per forward/backward on one worker; None: batch_size / workers (no "
        "gradient accumulation)")
    learning_rate: float = Field(5e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int | None = Field(None, ge=0, description="linear warm-up steps; exclusive with warmup_ratio "
                                     "(neither: 10)")
    warmup_ratio: float | None = Field(None, ge=0, lt=1,
                                       description="warm-up as a share of the steps (rounded up), as HF's Trainer")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="the cosine schedule's floor, as a share of the peak")
    grad_clip: float = Field(1.0, gt=0)
    loss_normalization: Literal["per_micro_batch", "global_tokens"] = Field(
        "per_micro_batch", description="per_micro_batch (the paper's trainer): each micro-batch's loss is the sum "
        "over its selected tokens divided by their number, averaged over micro-batches and workers; "
        "global_tokens (TRL's num_items_in_batch): the sum over every selected token of the global batch divided "
        "by their number, counted across accumulation steps and workers")
    max_length: int = Field(256, ge=8)
    packing: bool = False
    workers: int = Field(1, ge=0, validate_default=True,
                         description="training processes; 0: in the caller's process (Ray Train local mode)")
    cpus_per_worker: float = Field(1, gt=0)
    gpus_per_worker: float = Field(0, ge=0)
    strategy: Literal["ddp", "fsdp"] = "ddp"
    runner: Literal["auto", "tune", "ray_train"] = Field(
        "auto", description="what runs a sweep trial's training loop: tune, inside the Tune trial itself (one "
        "worker; the trial holds its CPUs/GPUs, reports and checkpoints through Tune, retries through Tune's "
        "FailureConfig); ray_train, a Ray Train TorchTrainer run started by the trial (any number of workers, "
        "DDP or FSDP); auto: tune for one worker, else ray_train")
    bf16: bool = True  # bf16 autocast where a GPU is used
    seed: int = 0
    report_every: int = Field(10, ge=1)
    eval_every: int = Field(50, ge=1)  # held-out NLL, the intermediate signal for ASHA
    checkpoint_every: int = Field(0, ge=0)  # 0: only the final checkpoint
    max_failures: int = Field(1, ge=0, description="restarts from the latest checkpoint after a worker dies")

    @field_validator(*_EITHER)
    @classmethod
    def _not_both(cls, value: float | None, info: ValidationInfo) -> float | None:
        other = _EITHER[info.field_name]
        if value is not None and info.data.get(other) is not None:
            raise ValueError(f"give {other} or {info.field_name}, not both")
        return value

    @field_validator("workers")
    @classmethod
    def _batch_splits(cls, workers: int, info: ValidationInfo) -> int:
        batch, micro = info.data.get("batch_size"), info.data.get("micro_batch_size")
        world = max(workers, 1)
        if batch is not None and batch % world:
            raise ValueError(f"batch_size {batch} does not split evenly over {world} workers")
        if batch is not None and micro is not None and (batch // world) % micro:
            raise ValueError(f"batch_size {batch} over {world} worker(s) is {batch // world} sequences each, "
                             f"not a multiple of micro_batch_size {micro}")
        return workers

    @field_validator("runner")
    @classmethod
    def _runner_fits(cls, runner: str, info: ValidationInfo) -> str:
        if runner == "tune" and info.data.get("workers") != 1:
            raise ValueError(f"tune runs one worker inside the trial; workers: {info.data.get('workers')} needs "
                             "ray_train (or auto)")
        return runner

    @model_validator(mode="after")
    def _defaults(self) -> TrainConfig:
        if self.steps is None and self.epochs is None:
            self.steps = DEFAULT_STEPS
        if self.warmup_steps is None and self.warmup_ratio is None:
            self.warmup_steps = DEFAULT_WARMUP_STEPS
        return self

    @property
    def runs_in_trial(self) -> bool:
        """Whether a sweep trial runs the loop itself (runner tune, or auto with one worker)."""
        return self.runner == "tune" or (self.runner == "auto" and self.workers == 1)

    @property
    def per_worker(self) -> tuple[int, int]:
        """(micro-batch size, accumulation steps) of each worker."""
        each = self.batch_size // max(self.workers, 1)
        micro = self.micro_batch_size or each
        return micro, each // micro

    def total_steps(self, train_rows: int) -> int:
        """Optimizer steps of the run: `steps`, or `epochs` passes over `train_rows` rows."""
        if self.steps is not None:
            return self.steps
        per_epoch = train_rows // self.batch_size
        if per_epoch == 0:
            raise ValueError(f"train.batch_size: {self.batch_size} sequences per step but only {train_rows} "
                             "training rows")
        return max(1, math.ceil(self.epochs * per_epoch))

    def warmup_for(self, total_steps: int) -> int:
        return self.warmup_steps if self.warmup_steps is not None else math.ceil(self.warmup_ratio * total_steps)

    def with_overrides(self, overrides: dict[str, Any]) -> TrainConfig:
        """These settings with `overrides` applied; setting one of steps/epochs (or warmup_steps/warmup_ratio)
        replaces the other."""
        base = self.model_dump()
        for pair in _EITHER.items():
            for one, other in (pair, pair[::-1]):
                if overrides.get(one) is not None:
                    base[other] = None
        return TrainConfig.model_validate({**base, **overrides})


class EvalConfig(_Strict):
    backend: Literal["auto", "vllm", "hf"] = "auto"
    max_new_tokens: int = Field(256, ge=1)
    batch_size: int = Field(32, ge=1)
    temperature: float = Field(0.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    n_samples: int = Field(1, ge=1)
    tensor_parallel_size: int = Field(1, ge=1)
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1)
    max_model_len: int | None = None
    num_cpus: float = Field(0, ge=0)
    num_gpus: float = Field(0, ge=0)
    timeout_s: float = Field(1800, gt=0)
    max_restarts: int = Field(2, ge=0)
    limit: int | None = Field(None, ge=1)  # cap every benchmark's rows (quick sweeps)
    samples_logged: int = Field(20, ge=0)
    seed: int = 0  # sampling seed (temperature > 0)
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)  # extra vllm.LLM(...) arguments, e.g. enforce_eager
    reuse_engine: bool = True  # vllm: reload each checkpoint's weights into the running engine; false: new engine
    replicas: int = Field(1, ge=1)  # evaluator actors in the sweep's pool, each with num_cpus / num_gpus


class ConfirmSpec(_Strict):
    """After the search, train the top-k objectives again with new seeds; the best is the finalist with the
    best mean over all of its seeds."""

    top_k: int = Field(2, ge=1)
    seeds: int = Field(2, ge=1)  # new seeds per finalist, numbered on from the sweep's largest seed


class TrackingSpec(_Strict):
    mlflow_uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite in output_dir


class StorageSpec(_Strict):
    optuna: str | None = None  # None: $ALPHASWEEP_OPTUNA_STORAGE, else sqlite in output_dir
    checkpoints: str | None = None  # None: $ALPHASWEEP_STORAGE_PATH, else output_dir/ray


class DemoBase(_Strict):
    """How the demo's tiny base model is built (see tinykit.build_base)."""

    pretrain_tasks: dict[str, int] = Field(
        default_factory=lambda: {"addition": 9000, "recode-mixed": 3000, "copy": 2000})
    steps: int = Field(2500, ge=0)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(2e-3, gt=0)
    warmup_steps: int = Field(100, ge=0)
    hidden: int = Field(64, ge=32, multiple_of=32)  # a multiple of tinykit.HEAD_DIM
    layers: int = Field(3, ge=1)
    seed: int = 0


class DemoTask(_Strict):
    """One synthetic task's files: train (optionally noisy) and a clean held-out test set."""

    n_train: int = Field(2000, ge=1)
    n_test: int = Field(200, ge=1)
    noise: float = Field(0.0, ge=0, lt=1)
    seed: int = 0  # draws the training rows and their noise; the test set is the same for every seed


class DemoSpec(_Strict):
    """The embedded default: tiny bases and synthetic data built locally; `demo:` paths point at them."""

    cache_dir: str | None = None  # None: $ALPHASWEEP_CACHE, else ~/.cache/alphasweep
    base: DemoBase = DemoBase()
    tasks: dict[str, DemoTask] = Field(default_factory=dict)


class SweepConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    output_dir: str
    models: list[ModelSpec] = Field(min_length=1)
    domains: list[DomainSpec] = Field(min_length=1)
    search: SearchSpec = SearchSpec()
    budget: BudgetSpec = BudgetSpec()
    scheduler: SchedulerSpec = SchedulerSpec()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    tracking: TrackingSpec = TrackingSpec()
    storage: StorageSpec = StorageSpec()
    demo: DemoSpec | None = None  # the embedded default: what to build locally (see demo.py)
    # Training seeds (train.seed: initialisation, data order, held-out split): the search trains with the first,
    # then every objective it ran is trained with each other one. None: [train.seed].
    seeds: list[int] | None = Field(None, min_length=1)
    confirm: ConfirmSpec | None = None  # None: no confirmation stage

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int] | None) -> list[int] | None:
        if seeds and len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must be distinct, got {seeds}")
        return seeds

    @property
    def out(self) -> Path:
        return Path(self.output_dir).expanduser().resolve()

    def mlflow_uri(self) -> str:
        return (
            self.tracking.mlflow_uri
            or os.environ.get("MLFLOW_TRACKING_URI")
            or f"sqlite:///{self.out / 'mlflow.db'}"
        )

    def optuna_storage(self) -> str:
        return (
            self.storage.optuna
            or os.environ.get("ALPHASWEEP_OPTUNA_STORAGE")
            or f"sqlite:///{self.out / 'optuna.db'}"
        )

    def checkpoint_root(self) -> str:
        return self.storage.checkpoints or os.environ.get("ALPHASWEEP_STORAGE_PATH") or str(self.out / "ray")

    def sweep_seeds(self) -> list[int]:
        return self.seeds or [self.train.seed]

    def confirm_seeds(self) -> list[int]:
        """The confirmation stage's seeds: new ones, after the sweep's largest."""
        start = max(self.sweep_seeds()) + 1
        return list(range(start, start + self.confirm.seeds)) if self.confirm else []

    def pairs(self) -> list[tuple[ModelSpec, DomainSpec]]:
        return [(m, d) for m in self.models for d in self.domains]

    def train_for(self, domain: DomainSpec, model: ModelSpec | None = None) -> TrainConfig:
        """The sweep's training settings with the domain's `train_overrides`, then the model's, applied."""
        settings = self.train.with_overrides(domain.train_overrides)
        return settings.with_overrides(model.train_overrides) if model else settings

    def data_for(self, model: ModelSpec, domain: DomainSpec) -> DataSpec:
        """The domain's SFT data as this model reads it (its prompt template, unless the data names one)."""
        if domain.train.prompt_template or not model.prompt_template:
            return domain.train
        return domain.train.model_copy(update={"prompt_template": model.prompt_template})

    def benchmarks_for(self, model: ModelSpec, domain: DomainSpec) -> list[BenchmarkSpec]:
        """The domain's benchmarks as this model is asked them (its prompt template, unless a spec names one)."""
        return [b if b.prompt_template or not model.prompt_template
                else b.model_copy(update={"prompt_template": model.prompt_template}) for b in domain.benchmarks]

    @model_validator(mode="after")
    def _overrides_valid(self) -> SweepConfig:
        for i, d in enumerate(self.domains):
            try:
                self.train_for(d)
            except ValidationError as e:
                err = e.errors()[0]
                raise ValueError(f"domains.{i}.train_overrides.{_field_path(err['loc'])}: {err['msg']}") from None
        for i, m in enumerate(self.models):
            for d in self.domains:
                try:
                    self.train_for(d, m)
                except ValidationError as e:
                    err = e.errors()[0]
                    raise ValueError(f"models.{i}.train_overrides.{_field_path(err['loc'])}: {err['msg']} "
                                     f"(with domain {d.name!r})") from None
        return self


def _field_path(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc) or "<top level>"


def _error_text(err: dict[str, Any]) -> str:
    """pydantic's message, with the value it found when that value is a plain one (not a whole section)."""
    text = err["msg"].removeprefix("Value error, ")
    value = err.get("input")
    if err["type"] != "missing" and isinstance(value, (str, int, float, bool)):
        text += f", found {value!r}"
    return text


def _resolve_paths(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    """Make relative local paths relative to the config file, so a config runs from any cwd."""

    def fix(p: str) -> str:
        candidate = base / p
        return str(candidate) if not Path(p).is_absolute() and (p.startswith(".") or candidate.exists()) else p

    if isinstance(raw.get("output_dir"), str) and not Path(raw["output_dir"]).is_absolute():
        raw["output_dir"] = str(base / raw["output_dir"])
    for m in raw.get("models") or []:
        if isinstance(m, dict) and isinstance(m.get("path"), str):
            m["path"] = fix(m["path"])
    for d in raw.get("domains") or []:
        if not isinstance(d, dict):
            continue
        if isinstance(d.get("train"), dict) and isinstance(d["train"].get("path"), str):
            d["train"]["path"] = fix(d["train"]["path"])
        for b in d.get("benchmarks") or []:
            if isinstance(b, dict) and isinstance(b.get("path"), str):
                b["path"] = fix(b["path"])
    return raw


def set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """Apply a `section.key=value` override to a raw config dict; list items by index (`domains.0.train`)."""
    *parents, last = dotted.split(".")
    node: Any = raw
    for key in parents:
        if isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        elif isinstance(node, dict):
            node = node.setdefault(key, {})
        else:
            raise ConfigError(f"override {dotted}: cannot descend into {key!r}")
    if isinstance(node, list) and last.isdigit() and int(last) < len(node):
        node[int(last)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"override {dotted}: cannot set {last!r}")


def parse_config(raw: Any, source: str = "<config>", overrides: list[str] = ()) -> SweepConfig:
    """Validate a raw mapping; `overrides` are `a.b=value` strings whose values are parsed as YAML."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected key.path=value")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: the value is not valid YAML: {str(e).splitlines()[0]}") from None
        set_dotted(raw, key.strip(), parsed)
    try:
        return SweepConfig.model_validate(raw)
    except ValidationError as e:
        lines = [f"{source}: {_field_path(err['loc']) + ': ' if err['loc'] else ''}{_error_text(err)}"
                 for err in e.errors()]
        more = f" (and {len(lines) - 1} more)" if len(lines) > 1 else ""
        raise ConfigError(lines[0] + more, lines) from None


def load_config(path: str | Path, overrides: list[str] = ()) -> SweepConfig:
    """Read, resolve relative paths against the file's folder, apply overrides and validate."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a YAML text file (not UTF-8)") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    if isinstance(raw, dict):
        raw = _resolve_paths(raw, path.resolve().parent)
    return parse_config(raw, str(path), overrides)
