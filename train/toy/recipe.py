"""The whole training recipe at toy scale, on 2 CPU cores: toy data → tokenizer and tiny Qwen2 → SFT → GRPO →
evaluation on held-out problems → models/toy-math and a results table.

    python -m train.toy.recipe --config configs/toy/recipe.yaml    # `make toy`: one seed, ~10 min on 2 idle cores
    python -m train.toy.recipe --config configs/toy/study.yaml     # 3 seeds and the 1-epoch SFT controls
    python -m train.toy.recipe --config configs/toy/recipe.yaml --resume   # after Ctrl-C: on from the checkpoints

SFT and GRPO run through train/sft.py and train/grpo.py with configs/toy/sft.yaml and configs/toy/grpo.yaml (the
same code paths as the 14B recipes); this script only fills in the paths and the seed, then measures. The model of
the first seed is written to `model_dir` (float32 safetensors + tokenizer, loadable by transformers and vLLM).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from inference.mappings import dataclass_from_mapping
from train import interrupt
from train.data import write_jsonl
from train.toy.task import make_splits, make_trace, sample_rechecks

logger = logging.getLogger("train.toy.recipe")


@dataclass
class EvalSettings:
    max_new_tokens: int = 200
    batch_size: int = 125
    temperatures: list[float] = field(default_factory=lambda: [0.6, 1.0])  # one sample per problem at each
    vote_temperature: float = 0.8  # majority vote over vote_samples samples, as the demo server does
    vote_samples: int = 8
    vote_problems: int = 100


@dataclass
class ToyRecipe:
    """Keys of configs/toy/recipe.yaml."""

    run_dir: str = "runs/toy"
    model_dir: str | None = "models/toy-math"
    results_markdown: str | None = "runs/toy/RESULTS.md"
    results_json: str | None = "runs/toy/results.json"
    sft_config: str = "configs/toy/sft.yaml"
    grpo_config: str = "configs/toy/grpo.yaml"
    seeds: list[int] = field(default_factory=lambda: [0])
    # Problems per split; the splits are disjoint. `sft_extra` only feeds SFT controls with more rows.
    splits: dict[str, int] = field(default_factory=lambda: {"sft": 4000, "grpo": 2000, "validation": 200, "test": 500})
    recheck_probs: list[float] = field(default_factory=lambda: [0.2, 0.3, 0.5])  # P(0, 1, 2 re-checks) in SFT traces
    model: dict = field(default_factory=lambda: {"hidden_size": 128, "num_layers": 4, "intermediate_size": 512})
    eval: EvalSettings = field(default_factory=EvalSettings)
    # Extra SFT runs to compare with the main one, e.g. {name: "1 epoch", num_train_epochs: 1, sft_rows: 4000}.
    sft_controls: list[dict] = field(default_factory=list)

    @classmethod
    def load(cls, path: str | Path) -> "ToyRecipe":
        d = yaml.safe_load(Path(path).read_text()) or {}
        if isinstance(d, dict) and "eval" in d:
            d["eval"] = dataclass_from_mapping(EvalSettings, d["eval"], f"{path}: eval")
        return dataclass_from_mapping(cls, d, str(path))


# --- stages -----------------------------------------------------------------------------------------------------------


def write_data(recipe: ToyRecipe, seed: int, data_dir: Path, sft_rows_needed: int) -> dict[str, Path]:
    """JSONL files: sft (problem, generation, answer), sft_<n> for bigger controls, grpo/validation/test (id,
    problem, answer)."""
    sizes = dict(recipe.splits)
    sizes["sft"] = max(sizes["sft"], sft_rows_needed)
    splits = make_splits(sizes, seed=seed)
    rng = random.Random(seed + 1)
    data_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    sft_rows = [
        {"problem": p.problem, "generation": make_trace(p, sample_rechecks(rng, tuple(recipe.recheck_probs))),
         "answer": p.answer}
        for p in splits["sft"]
    ]
    for n in sorted({recipe.splits["sft"], sft_rows_needed}):
        name = "sft" if n == recipe.splits["sft"] else f"sft_{n}"
        paths[name] = write_jsonl(sft_rows[:n], data_dir / f"{name}.jsonl")
    for name in ("grpo", "validation", "test"):
        rows = [{"id": p.id, "problem": p.problem, "answer": p.answer} for p in splits[name]]
        paths[name] = write_jsonl(rows, data_dir / f"{name}.jsonl")
    return paths


def run_sft(recipe: ToyRecipe, seed: int, init_dir: Path, data: dict[str, Path], out: Path,
            overrides: dict | None = None, sft_path: Path | None = None) -> Path:
    from train import sft

    args = ["--config", recipe.sft_config, "--model_name_or_path", str(init_dir), "--output_dir", str(out),
            "--seed", str(seed), "--eval_file", str(data["validation"])]
    for key, value in (overrides or {}).items():
        args += [f"--{key}", str(value)]
    data_args, training_args, model_args = sft.make_parser().parse_args_and_config(args)
    data_args.dataset_sources = [{"path": str(sft_path or data["sft"]), "label": "toy-sft"}]
    return sft.main(data_args, training_args, model_args)


def run_grpo(recipe: ToyRecipe, seed: int, sft_dir: Path, data: dict[str, Path], out: Path) -> Path:
    from train import grpo

    args = ["--config", recipe.grpo_config, "--model_name_or_path", str(sft_dir), "--output_dir", str(out),
            "--seed", str(seed), "--eval_file", str(data["validation"])]
    data_args, training_args, model_args = grpo.make_parser().parse_args_and_config(args)
    data_args.dataset_sources = [{"path": str(data["grpo"]), "label": "toy-grpo"}]
    return grpo.main(data_args, training_args, model_args)


def evaluate(model_dir: Path, test_file: Path, settings: EvalSettings, seed: int) -> dict:
    """Greedy accuracy and tokens on the test problems, sampled accuracy at each temperature, majority vote."""
    from collections import Counter

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from inference.answers import extract_answer
    from inference.grading import grade
    from train.configs import DEFAULT_SYSTEM_PROMPT
    from train.data import load_eval_problems
    from train.common import generate_answers, summarize

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    problems = load_eval_problems(str(test_file), system_prompt=DEFAULT_SYSTEM_PROMPT)
    common = {"max_new_tokens": settings.max_new_tokens, "batch_size": settings.batch_size}
    metrics = {"greedy": summarize(generate_answers(model, tokenizer, problems, **common))}
    for temperature in settings.temperatures:
        torch.manual_seed(seed)
        results = generate_answers(model, tokenizer, problems, do_sample=True, temperature=temperature, **common)
        metrics[f"T={temperature}"] = summarize(results)
    if settings.vote_samples:
        torch.manual_seed(seed)
        subset = problems[: settings.vote_problems]
        results = generate_answers(model, tokenizer, subset, do_sample=True, temperature=settings.vote_temperature,
                                   num_samples=settings.vote_samples, **common)
        correct = 0
        for i, problem in enumerate(subset):
            votes = Counter(a for r in results if r["problem"] == i and (a := extract_answer(r["text"])) is not None)
            winner = votes.most_common(1)[0][0] if votes else None
            correct += bool(grade(f"\\boxed{{{winner}}}", problem["solution"])) if winner is not None else 0
        samples = summarize(results)
        metrics[f"maj@{settings.vote_samples} T={settings.vote_temperature}"] = {
            "accuracy": correct / len(subset), "n": len(subset),
            "sample_accuracy": samples["accuracy"], "mean_tokens": samples["mean_tokens"]}
    return metrics


def training_steps(output_dir: Path) -> int:
    """Optimizer steps of a finished run, from its newest checkpoint's trainer_state.json."""
    states = sorted(output_dir.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[1]))
    return json.loads(states[-1].read_text())["global_step"] if states else 0


def read_history(output_dir: Path) -> list[dict]:
    path = output_dir / "accuracy_eval.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def run_seed(recipe: ToyRecipe, seed: int, resume: bool = False) -> dict:
    from train.toy.model_factory import make_tiny_model

    root = Path(recipe.run_dir) / f"seed{seed}"
    if root.exists() and not resume:
        shutil.rmtree(root)  # a fresh run each time (train/sft.py would otherwise resume old checkpoints)
    timings, result = {}, {"seed": seed}
    rows_needed = max([c.get("sft_rows", recipe.splits["sft"]) for c in recipe.sft_controls] + [recipe.splits["sft"]])

    start = time.perf_counter()
    data = write_data(recipe, seed, root / "data", rows_needed)
    init = make_tiny_model(root / "init", seed=seed, **recipe.model)
    timings["data_and_model"] = time.perf_counter() - start

    start = time.perf_counter()
    sft_dir = run_sft(recipe, seed, init, data, root / "sft")
    timings["sft"] = time.perf_counter() - start
    result["sft_steps"], result["sft_history"] = training_steps(sft_dir), read_history(sft_dir)

    start = time.perf_counter()
    grpo_dir = run_grpo(recipe, seed, sft_dir, data, root / "grpo")
    timings["grpo"] = time.perf_counter() - start
    result["grpo_history"] = read_history(grpo_dir)
    selected = grpo_dir / "selected_checkpoint.json"
    result["grpo_selected"] = json.loads(selected.read_text()) if selected.exists() else None
    result["grpo_steps"] = training_steps(grpo_dir)

    start = time.perf_counter()
    result["sft"] = evaluate(sft_dir, data["test"], recipe.eval, seed)
    result["grpo"] = evaluate(grpo_dir, data["test"], recipe.eval, seed)
    timings["evaluation"] = time.perf_counter() - start

    result["controls"] = []
    for control in recipe.sft_controls:
        control = dict(control)
        name, rows = control.pop("name"), control.pop("sft_rows", recipe.splits["sft"])
        start = time.perf_counter()
        path = data["sft"] if rows == recipe.splits["sft"] else data[f"sft_{rows}"]
        out = run_sft(recipe, seed, init, data, root / f"control-{name.replace(' ', '-')}", control, sft_path=path)
        greedy_only = EvalSettings(recipe.eval.max_new_tokens, recipe.eval.batch_size, temperatures=[], vote_samples=0)
        greedy = evaluate(out, data["test"], greedy_only, seed)["greedy"]
        result["controls"].append({"name": name, "rows": rows, "overrides": control, "steps": training_steps(out),
                                   "greedy": greedy, "seconds": time.perf_counter() - start})
    result["timings"] = timings
    result["grpo_dir"] = str(grpo_dir)
    return result


# --- reporting --------------------------------------------------------------------------------------------------------


def _mean_sd(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    values = [v * scale for v in values]
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def write_results(recipe: ToyRecipe, runs: list[dict], wall_seconds: float, config_path: str) -> dict:
    seeds = [r["seed"] for r in runs]
    summary = {"seeds": seeds, "wall_seconds": wall_seconds, "runs": runs}
    lines = [
        "# Toy recipe results",
        "",
        f"Written by `python -m train.toy.recipe --config {config_path}`. Seeds: {seeds} "
        f"({'mean ± SD over seeds' if len(seeds) > 1 else 'one seed'}). Held-out test: {recipe.splits['test']} "
        "problems per seed, disjoint from all training problems. Accuracy in %; tokens = generated tokens per answer "
        f"(EOS included, budget {recipe.eval.max_new_tokens}).",
        "",
        "| model | greedy acc | greedy tokens | " + " | ".join(f"T={t} acc | T={t} tokens" for t in recipe.eval.temperatures)
        + (f" | maj@{recipe.eval.vote_samples} (T={recipe.eval.vote_temperature}, {recipe.eval.vote_problems} problems)"
           if recipe.eval.vote_samples else "") + " |",
        "|---|---|---|" + "---|---|" * len(recipe.eval.temperatures) + ("---|" if recipe.eval.vote_samples else ""),
    ]
    vote_key = f"maj@{recipe.eval.vote_samples} T={recipe.eval.vote_temperature}"
    for stage in ("sft", "grpo"):
        cells = [_mean_sd([r[stage]["greedy"]["accuracy"] for r in runs], 100),
                 _mean_sd([r[stage]["greedy"]["mean_tokens"] for r in runs])]
        for t in recipe.eval.temperatures:
            cells += [_mean_sd([r[stage][f"T={t}"]["accuracy"] for r in runs], 100),
                      _mean_sd([r[stage][f"T={t}"]["mean_tokens"] for r in runs])]
        if recipe.eval.vote_samples:
            cells.append(_mean_sd([r[stage][vote_key]["accuracy"] for r in runs], 100))
        label = "SFT" if stage == "sft" else "SFT + GRPO (selected checkpoint)"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    cut = [1 - r["grpo"]["greedy"]["mean_tokens"] / r["sft"]["greedy"]["mean_tokens"] for r in runs]
    loss = [r["sft"]["greedy"]["accuracy"] - r["grpo"]["greedy"]["accuracy"] for r in runs]
    summary["grpo_token_cut"], summary["grpo_accuracy_loss_points"] = cut, [x * 100 for x in loss]
    lines += [
        "",
        f"GRPO cut greedy answer length by {_mean_sd(cut, 100)}% at an accuracy change of "
        f"{_mean_sd([-x for x in loss], 100)} points. GRPO steps run: {_mean_sd([r['grpo_steps'] for r in runs], 1, 0)}; "
        "selected checkpoint step(s): " + ", ".join(str((r["grpo_selected"] or {}).get("step", "last")) for r in runs)
        + ".",
        "",
        "## SFT: epochs and steps",
        "",
        "Validation accuracy (greedy, 200 problems) at the end of each epoch of the main SFT run:",
        "",
        "| epoch | step | " + " | ".join(f"seed {r['seed']}" for r in runs) + " |",
        "|---|---|" + "---|" * len(runs),
    ]
    for i, h in enumerate(runs[0]["sft_history"]):
        cells = [f"{100 * r['sft_history'][i]['accuracy']:.1f}% ({r['sft_history'][i]['mean_tokens']:.0f} tok)"
                 for r in runs if i < len(r["sft_history"])]
        lines.append(f"| {h['epoch']:.0f} | {h['step']} | " + " | ".join(cells) + " |")
    if runs[0]["controls"]:
        lines += ["", "SFT runs compared on the test set (greedy):", "",
                  "| SFT run | rows | epochs | steps | test acc | tokens |", "|---|---|---|---|---|---|",
                  f"| main | {recipe.splits['sft']} | {runs[0]['sft_history'][-1]['epoch']:.0f} | "
                  f"{_mean_sd([r['sft_steps'] for r in runs], 1, 0)} | "
                  f"{_mean_sd([r['sft']['greedy']['accuracy'] for r in runs], 100)} | "
                  f"{_mean_sd([r['sft']['greedy']['mean_tokens'] for r in runs])} |"]
        for j, c in enumerate(runs[0]["controls"]):
            lines.append(
                f"| {c['name']} | {c['rows']} | {c['overrides'].get('num_train_epochs', '')} | "
                f"{_mean_sd([r['controls'][j]['steps'] for r in runs], 1, 0)} | "
                f"{_mean_sd([r['controls'][j]['greedy']['accuracy'] for r in runs], 100)} | "
                f"{_mean_sd([r['controls'][j]['greedy']['mean_tokens'] for r in runs])} |")
    lines += ["", "## GRPO checkpoints (validation, greedy)", "",
              "| step | " + " | ".join(f"seed {r['seed']}: acc / tokens" for r in runs) + " |",
              "|---|" + "---|" * len(runs)]
    for i, h in enumerate(runs[0]["grpo_history"]):
        cells = [f"{100 * r['grpo_history'][i]['accuracy']:.1f}% / {r['grpo_history'][i]['mean_tokens']:.1f}"
                 for r in runs if i < len(r["grpo_history"])]
        lines.append(f"| {h['step']} | " + " | ".join(cells) + " |")
    lines += ["", "## Wall time (seconds, 2 CPU cores shared with other work: expect less on an idle machine)", "",
              "| seed | data + model | SFT | GRPO | evaluation | controls |", "|---|---|---|---|---|---|"]
    for r in runs:
        t = r["timings"]
        lines.append(f"| {r['seed']} | {t['data_and_model']:.0f} | {t['sft']:.0f} | {t['grpo']:.0f} | "
                     f"{t['evaluation']:.0f} | {sum(c['seconds'] for c in r['controls']):.0f} |")
    lines += ["", f"Whole command: {wall_seconds / 60:.1f} min.", ""]
    if recipe.results_markdown:
        Path(recipe.results_markdown).write_text("\n".join(lines))
    if recipe.results_json:
        Path(recipe.results_json).write_text(json.dumps(summary, indent=1) + "\n")
    print("\n".join(lines))
    return summary


def export_model(grpo_dir: Path, model_dir: Path) -> None:
    """The final toy model: weights (float32 safetensors), config and tokenizer, nothing else."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if model_dir.exists():
        shutil.rmtree(model_dir)
    AutoModelForCausalLM.from_pretrained(grpo_dir).save_pretrained(model_dir)
    AutoTokenizer.from_pretrained(grpo_dir).save_pretrained(model_dir)
    logger.info("wrote %s", model_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/toy/recipe.yaml")
    parser.add_argument("--resume", action="store_true",
                        help="continue a run stopped by Ctrl-C from its checkpoints (the data and init are rebuilt "
                        "identically from the seed)")
    args = parser.parse_args()
    interrupt.RESUME_HINT = (f"resume with `.venv/bin/python -m train.toy.recipe --config {args.config} --resume` "
                             "(`make toy RESUME=1`)")
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    recipe = ToyRecipe.load(args.config)
    start = time.perf_counter()
    runs = []
    for seed in recipe.seeds:
        runs.append(run_seed(recipe, seed, resume=args.resume))
        if recipe.model_dir and seed == recipe.seeds[0]:
            export_model(Path(runs[0]["grpo_dir"]), Path(recipe.model_dir))
    write_results(recipe, runs, time.perf_counter() - start, args.config)


if __name__ == "__main__":
    main()
