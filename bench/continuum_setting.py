"""Which laptop-scale setting makes the embedded demo show the model-capability continuum, robustly?

Li et al. (arXiv 2510.00526): prior-leaning objectives (`p` = GeneralFamily-1, large alpha, top cuts) win
where the base model already knows the domain (model-strong); NLL wins where it does not (model-weak).
This study reproduces both ends with a tiny Llama from `alphasweep.tinykit`:

- strong pair: a base pretrained on `addition`, fine-tuned on addition demonstrations of which a share is
  noisy, scored by greedy exact match on clean held-out problems;
- weak pair: the same base fine-tuned on a clean digit-substitution task it has never seen (`subst4`, a
  4-digit variant of synthetic's `cipher`: the tinykit Llama cannot learn the reversed 3-5 digit cipher in
  300 steps at a learning rate the strong pair tolerates).

For each setting and seed it builds the base (cached), probes it (mean target probability of the SFT
completion tokens), fine-tunes it with each objective (the SFT loop of `alphasweep.workers.loop`, without
Ray: AdamW betas (0.9, 0.95), cosine schedule with warm-up down to 10%, grad clip 1, loss on completion
tokens only) and prints accuracy mean +- std over seeds, the per-seed gaps, and whether the targets hold:

    strong: best objective prior-leaning (alpha >= 1 or a top cut) and p - NLL >= 5 points in every seed
    weak:   best objective NLL or alpha <= 0.25            and NLL - p >= 5 points in every seed

Seed s sets the base's pretraining seed, the test and SFT problems, the noise draws and the SFT data order.

    .venv/bin/python bench/continuum_setting.py                      # single-lr and chosen, 5 objectives, 3 seeds
    .venv/bin/python bench/continuum_setting.py --grid screen        # the screening grid (NLL and p only)
    .venv/bin/python bench/continuum_setting.py --list               # names of the settings

Two worker processes with one thread each; results are cached in --work (a JSONL line per fine-tune, keyed
by the numbers that touch the pair), so an interrupted run resumes and a second call only prints. A fresh
default run: 3 bases (~75 s each) and 48 fine-tunes (~5.5 s each), about 5 minutes on two idle cores.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import random
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch
from transformers import AutoTokenizer, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from alphasweep import synthetic
from alphasweep.objectives import objective_loss, parse_objective
from alphasweep.tinykit import build_base

OBJECTIVES = ["original", "GeneralFamily-0.25", "p", "GeneralFamily-4", "OnlyTopLogP-0.5"]
SCREEN_OBJECTIVES = ["original", "p"]
PRIOR_LEANING = {"p", "GeneralFamily-1", "GeneralFamily-4", "OnlyTopLogP-0.5", "OnlyTopP-0.5"}
DATA_AVERSE = {"original", "GeneralFamily-0.25"}


# ---------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Setting:
    name: str
    # base model (tinykit.build_base): pretrained with NLL on `base_problems` distinct addition lines
    base_problems: int = 3000
    base_steps: int = 300
    base_batch: int = 64
    base_lr: float = 3e-3
    hidden: int = 96
    layers: int = 3
    # SFT data
    n_train: int = 2000  # strong pair (addition) demonstrations
    noise_kind: str = "wrong"  # see NOISE
    noise: float = 0.5  # share of noisy addition demonstrations
    weak_task: str = "cipher"  # synthetic's cipher, or a prototype in WEAK_TASKS
    n_train_weak: int = 2000  # weak pair demonstrations (clean)
    n_test: int = 200  # per pair; held-out, clean, excluded from pretraining and SFT
    # SFT (a sweep config's `train:` block; lr_weak stands for a domain's `train_overrides`)
    steps: int = 300
    batch_size: int = 32
    lr: float = 3e-3
    lr_weak: float | None = None  # None: `lr` for both pairs; else the weak pair's own (a per-domain lr)
    warmup: int = 10
    min_lr_ratio: float = 0.1
    max_length: int = 32
    max_new_tokens: int = 8

    def base_recipe(self) -> tuple:
        return (self.base_problems, self.base_steps, self.base_batch, self.base_lr, self.hidden, self.layers)


# the prototype recipe (a GPT there; +7.3, +6.4, +2.0 strong, +74, +95, +49 weak) on tinykit's Llama
PROTOTYPE = Setting("prototype")
# the working point found by hand (docs/continuum-setting.md), then screened one knob at a time
POINT = replace(PROTOTYPE, name="point", base_problems=9000, base_steps=1000, n_train=300, lr=1e-3,
                weak_task="subst4")
SCREEN = [
    POINT,
    replace(POINT, name="noise0.3", noise=0.3),
    replace(POINT, name="noise0.7", noise=0.7),
    replace(POINT, name="train600", n_train=600),
    replace(POINT, name="lr2e-3", lr=2e-3),
    replace(POINT, name="steps150", steps=150),
    replace(POINT, name="base600", base_steps=600),
    replace(POINT, name="base3000p", base_problems=3000),
    # round 2: knobs that might keep `p` away from its collapse (seen at lr 2e-3, noise 0.7, 600 rows)
    replace(POINT, name="warmup30", warmup=30),
    replace(POINT, name="lr7e-4", lr=7e-4),
    replace(POINT, name="base1500", base_steps=1500),
]
# one lr for both pairs: passes, but GeneralFamily-4 and the top cut collapse on the strong pair
SINGLE_LR = replace(POINT, name="single-lr")
# the pick: lr 3e-4 on the strong pair keeps every prior-leaning objective in its basin, the weak pair
# keeps 1e-3 (it learns nothing at <= 5e-4); in a sweep config: the strong domain's train_overrides
CHOSEN = replace(POINT, name="chosen", lr=3e-4, lr_weak=1e-3)
SETTINGS = {s.name: s for s in [PROTOTYPE, *SCREEN, SINGLE_LR, CHOSEN]}


# ------------------------------------------------------------------------------------------------- data
def _no_carry(prompt: str) -> str:
    """`a+b=` answered column by column without carrying: the classic systematic slip (57+68 -> 15)."""
    a, b = prompt.rstrip("=").split("+")
    a, b = a.zfill(2), b.zfill(2)
    return str(int("".join(str((int(x) + int(y)) % 10) for x, y in zip(a, b, strict=True))))


def corrupt_no_carry(rows: list[tuple[str, str]], rate: float, seed: int) -> list[tuple[str, str]]:
    """Answer a `rate` share of rows without carrying; rows with no carry stay correct."""
    rng = random.Random(f"nocarry-{seed}")
    return [(p, _no_carry(p) if rng.random() < rate else a) for p, a in rows]


NOISE = {
    "wrong": synthetic.corrupt,  # a random wrong answer of the same length: the base finds it implausible
    "nocarry": corrupt_no_carry,  # a consistent, human-like slip (prototype; not in synthetic.py)
}

_SUBST = str.maketrans("0123456789", "7305918264")  # synthetic._CIPHER


def _cipher4(rng: random.Random) -> tuple[str, str]:
    digits = "".join(rng.choice("0123456789") for _ in range(4))
    return f"#{digits}>", digits.translate(_SUBST)[::-1]


def _subst(rng: random.Random) -> tuple[str, str]:
    digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(3, 5)))
    return f"#{digits}>", digits.translate(_SUBST)


def _subst4(rng: random.Random) -> tuple[str, str]:
    digits = "".join(rng.choice("0123456789") for _ in range(4))
    return f"#{digits}>", digits.translate(_SUBST)


WEAK_TASKS = {"cipher4": _cipher4, "subst": _subst, "subst4": _subst4}  # prototypes; "cipher" is synthetic's


def problems(task: str, n: int, seed: int, exclude=()) -> list[tuple[str, str]]:
    """synthetic.problems, extended with the prototype tasks above (same drawing rule)."""
    if task in synthetic.TASKS:
        return synthetic.problems(task, n, seed, exclude)
    rng, seen, out = random.Random(f"{task}-{seed}"), set(exclude), []
    while len(out) < n:
        prompt, answer = WEAK_TASKS[task](rng)
        if prompt not in seen:
            seen.add(prompt)
            out.append((prompt, answer))
    return out


def pair_data(setting: Setting, pair: str, seed: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(train rows, clean test rows) of a pair, drawn as `synthetic.write_task_files` does."""
    task = "addition" if pair == "strong" else setting.weak_task
    test = problems(task, setting.n_test, seed=10_000 + seed)
    n_train = setting.n_train if pair == "strong" else setting.n_train_weak
    train = problems(task, n_train, seed=seed, exclude=[p for p, _ in test])
    if pair == "strong" and setting.noise:
        train = NOISE[setting.noise_kind](train, setting.noise, seed)
    return train, test


def base_path(setting: Setting, seed: int, work: Path) -> Path:
    held_out = [p for p, _ in synthetic.problems("addition", setting.n_test, seed=10_000 + seed)]
    return build_base(work / "bases", pretrain_tasks={"addition": setting.base_problems},
                      exclude={"addition": held_out}, steps=setting.base_steps, batch_size=setting.base_batch,
                      lr=setting.base_lr, hidden=setting.hidden, layers=setting.layers, seed=seed)


def encode(tok, rows, max_length: int) -> list[tuple[list[int], list[bool]]]:
    """`BOS prompt completion EOS`, loss on completion + EOS (as alphasweep.data, prompt_completion)."""
    out = []
    for prompt, completion in rows:
        p = tok(prompt)["input_ids"]
        c = tok(completion, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        out.append(((p + c)[:max_length], ([False] * len(p) + [True] * len(c))[:max_length]))
    return out


def collate(examples, pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch; `labels[t]` is the token after t, aligned with the full logits (as alphasweep.data)."""
    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.bool)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (x, m) in enumerate(examples):
        ids[row, : len(x)], mask[row, : len(x)], attention[row, : len(x)] = torch.tensor(x), torch.tensor(m), 1
    labels, loss_mask = torch.full_like(ids, pad_id), torch.zeros_like(mask)
    labels[:, :-1], loss_mask[:, :-1] = ids[:, 1:], mask[:, 1:]
    return {"input_ids": ids, "attention_mask": attention, "labels": labels, "loss_mask": loss_mask}


# ------------------------------------------------------------------------------------------- objectives
def loss_fn(name: str):
    """The objective's loss as alphasweep computes it."""
    objective = parse_objective(name)
    return lambda logits, labels, mask: objective_loss(logits, labels, mask, objective)


# -------------------------------------------------------------------------------------- train and eval
def fine_tune(model, tok, rows, setting: Setting, objective: str, seed: int, lr: float | None = None) -> None:
    torch.manual_seed(seed)
    lr = lr or setting.lr
    loss_of = loss_fn(objective)
    examples = encode(tok, rows, setting.max_length)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.95))

    def factor(step: int) -> float:  # alphasweep.workers.loop.cosine_with_warmup
        if step < setting.warmup:
            return (step + 1) / (setting.warmup + 1)
        progress = min((step - setting.warmup) / max(1, setting.steps - setting.warmup), 1.0)
        return setting.min_lr_ratio + (1 - setting.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    order: list[int] = []
    epoch = 0
    model.train()
    for _ in range(setting.steps):
        if len(order) < setting.batch_size:  # a fresh permutation per epoch (as the worker loop)
            g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            order, epoch = torch.randperm(len(examples), generator=g).tolist(), epoch + 1
        batch = collate([examples[i] for i in order[: setting.batch_size]], tok.pad_token_id)
        order = order[setting.batch_size :]
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        assert logits.shape[:2] == batch["labels"].shape, "labels must align with the full logits"
        loss = loss_of(logits, batch["labels"], batch["loss_mask"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    model.eval()


@torch.no_grad()
def accuracy(model, tok, test, max_new_tokens: int, batch_size: int = 256) -> float:
    """Greedy exact match. Prompts are grouped by token length, so no padding is needed and the decode is
    exactly what a left-padded `generate` gives; full re-forward per new token (sequences are < 16 tokens)."""
    model.eval()
    groups: dict[int, list[int]] = {}
    encoded = [tok(p)["input_ids"] for p, _ in test]
    for i, ids in enumerate(encoded):
        groups.setdefault(len(ids), []).append(i)
    correct = 0
    for idx in groups.values():
        for start in range(0, len(idx), batch_size):
            chunk = idx[start : start + batch_size]
            ids = torch.tensor([encoded[i] for i in chunk])
            done = torch.zeros(len(chunk), dtype=torch.bool)
            new = []
            for _ in range(max_new_tokens):
                nxt = model(input_ids=ids).logits[:, -1].argmax(-1)
                nxt = torch.where(done, torch.full_like(nxt, tok.eos_token_id), nxt)
                new.append(nxt)
                done |= nxt == tok.eos_token_id
                ids = torch.cat([ids, nxt[:, None]], 1)
                if done.all():
                    break
            out = torch.stack(new, 1).tolist()
            for row, i in zip(out, chunk, strict=True):
                row = row[: row.index(tok.eos_token_id)] if tok.eos_token_id in row else row
                correct += tok.decode(row, skip_special_tokens=True).strip() == test[i][1]
    return 100.0 * correct / len(test)


@torch.no_grad()
def probe(model, tok, rows, sample: int = 256) -> float:
    """Mean target probability of the base on SFT completion tokens (as alphasweep.probe)."""
    batch = collate(encode(tok, rows[:sample], 64), tok.pad_token_id)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logp = torch.log_softmax(logits, -1).gather(-1, batch["labels"][..., None]).squeeze(-1)
    return float(logp[batch["loss_mask"]].exp().mean())


# ------------------------------------------------------------------------------------------------- jobs
_ONLY = {"strong": {"weak_task", "n_train_weak", "lr_weak"}, "weak": {"n_train", "noise_kind", "noise", "lr_weak"}}


def pair_lr(setting: Setting, pair: str) -> float:
    return setting.lr_weak if pair == "weak" and setting.lr_weak else setting.lr


def _job_key(job: dict) -> str:
    """What determines a result: the setting's numbers that touch the pair (not its name), seed, objective."""
    setting = {k: v for k, v in job["setting"].items() if k != "name" and k not in _ONLY[job["pair"]]}
    setting["lr"] = pair_lr(Setting(**job["setting"]), job["pair"])
    return json.dumps({"setting": setting, **{k: job[k] for k in ("seed", "pair", "objective")}}, sort_keys=True)


def run_job(job: dict) -> dict:
    """One fine-tune + eval (objective None: the base itself, with the probe)."""
    torch.set_num_threads(1)
    setting, seed, pair, objective = Setting(**job["setting"]), job["seed"], job["pair"], job["objective"]
    path = base_path(setting, seed, Path(job["work"]))
    tok = AutoTokenizer.from_pretrained(path)
    model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32)
    train, test = pair_data(setting, pair, seed)
    result = {**job, "train_s": 0.0}
    t0 = time.perf_counter()
    if objective is None:
        result["probe_mean_p"] = probe(model, tok, train)
    else:
        fine_tune(model, tok, train, setting, objective, seed, lr=pair_lr(setting, pair))
    t1 = time.perf_counter()
    result["train_s"] = round(t1 - t0, 2) if objective else 0.0
    result["accuracy"] = accuracy(model, tok, test, setting.max_new_tokens)
    result["eval_s"] = round(time.perf_counter() - t1, 2)
    return result


def _build_base_job(args) -> str:
    torch.set_num_threads(1)
    setting, seed, work = args
    t0 = time.perf_counter()
    path = base_path(Setting(**setting), seed, Path(work))
    return f"{path.name} ({time.perf_counter() - t0:.0f} s)"


def run_all(settings: list[Setting], seeds: list[int], objectives: list[str], work: Path, workers: int) -> list[dict]:
    cache = work / "results.jsonl"
    done = {}
    if cache.exists():
        for line in cache.read_text().splitlines():
            r = json.loads(line)
            done[_job_key(r)] = r
    jobs = [
        {"setting": asdict(s), "seed": seed, "pair": pair, "objective": obj, "work": str(work)}
        for s in settings for seed in seeds for pair in ("strong", "weak") for obj in [None, *objectives]
    ]
    todo = [j for j in jobs if _job_key(j) not in done]
    if todo:
        ctx = mp.get_context("spawn")
        with ctx.Pool(workers) as pool:
            bases = {(s.base_recipe(), seed): (asdict(s), seed, str(work)) for s in settings for seed in seeds}
            for name in pool.imap_unordered(_build_base_job, list(bases.values())):
                print(f"  base {name}", flush=True)
            with cache.open("a") as f:
                for r in pool.imap_unordered(run_job, todo):
                    f.write(json.dumps(r) + "\n")
                    f.flush()
                    done[_job_key(r)] = r
                    print(f"  {r['setting']['name']:>12} seed {r['seed']} {r['pair']:>6} "
                          f"{r['objective'] or 'base':>18}: {r['accuracy']:5.1f}  "
                          f"(train {r['train_s']:.1f} s, eval {r['eval_s']:.1f} s)", flush=True)
    return [{**done[_job_key(j)], "setting": j["setting"]} for j in jobs]


# ----------------------------------------------------------------------------------------------- report
def report(results: list[dict], settings: list[Setting], seeds: list[int], objectives: list[str]) -> None:
    acc = {(r["setting"]["name"], r["seed"], r["pair"], r["objective"]): r for r in results}
    fmt = lambda xs: f"{statistics.mean(xs):5.1f} ± {statistics.stdev(xs) if len(xs) > 1 else 0.0:4.1f}"  # noqa: E731
    for s in settings:
        weak_lr = f" (weak {s.lr_weak:g})" if s.lr_weak else ""
        print(f"\n== {s.name}: base {s.base_problems} problems x {s.base_steps} steps; strong n_train {s.n_train}, "
              f"noise {s.noise_kind} {s.noise}; weak {s.weak_task} n_train {s.n_train_weak}; "
              f"SFT {s.steps} steps x {s.batch_size}, lr {s.lr:g}{weak_lr}, warmup {s.warmup}; n_test {s.n_test}")
        seed_heads = "".join(f"{'seed ' + str(x):>9}" for x in seeds)
        print(f"{'pair':<7}{'objective':<20}{seed_heads}{'mean ± std':>15}")
        verdict = {}
        for pair in ("strong", "weak"):
            probe_p = [acc[(s.name, x, pair, None)]["probe_mean_p"] for x in seeds]
            print(f"{pair:<7}{'probe mean p':<20}" + "".join(f"{v:9.3f}" for v in probe_p))
            means = {}
            for obj in [None, *objectives]:
                xs = [acc[(s.name, x, pair, obj)]["accuracy"] for x in seeds]
                means[obj] = statistics.mean(xs)
                print(f"{pair:<7}{obj or 'base (no SFT)':<20}" + "".join(f"{v:9.1f}" for v in xs) + f"{fmt(xs):>15}")
            a, b = ("p", "original") if pair == "strong" else ("original", "p")
            gaps = [acc[(s.name, x, pair, a)]["accuracy"] - acc[(s.name, x, pair, b)]["accuracy"] for x in seeds]
            best = max(objectives, key=lambda o: means[o])
            family_ok = best in (PRIOR_LEANING if pair == "strong" else DATA_AVERSE)
            ok = family_ok and min(gaps) >= 5 and statistics.mean(gaps) >= 5
            verdict[pair] = ok
            print(f"{pair:<7}{a + ' - ' + b:<20}" + "".join(f"{g:+9.1f}" for g in gaps) + f"{fmt(gaps):>15}"
                  f"   min {min(gaps):+.1f}; best {best} -> {'PASS' if ok else 'FAIL'}")
        train_s = [r["train_s"] for r in results if r["setting"]["name"] == s.name and r["objective"]]
        eval_s = [r["eval_s"] for r in results if r["setting"]["name"] == s.name and r["objective"]]
        print(f"timing: fine-tune {statistics.mean(train_s):.1f} s (max {max(train_s):.1f}), "
              f"eval {statistics.mean(eval_s):.2f} s (max {max(eval_s):.2f}) per trial, one thread; "
              f"both pairs {'PASS' if all(verdict.values()) else 'FAIL'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--grid", choices=["chosen", "screen"], default="chosen")
    ap.add_argument("--settings", nargs="*", help="names of settings to run (see --list)")
    ap.add_argument("--objectives", nargs="*", help="default: 5 for the chosen setting, NLL and p when screening")
    ap.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("/tmp/alphasweep-continuum"))
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args()
    if args.list:
        for s in SETTINGS.values():
            print(s)
        return
    default = SCREEN if args.grid == "screen" else [SINGLE_LR, CHOSEN]
    settings = [SETTINGS[n] for n in args.settings] if args.settings else default
    objectives = args.objectives or (SCREEN_OBJECTIVES if args.grid == "screen" else OBJECTIVES)
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    results = run_all(settings, args.seeds, objectives, args.work, args.workers)
    report(results, settings, args.seeds, objectives)
    print(f"\n({time.time() - t0:.0f} s wall)")


if __name__ == "__main__":
    main()
