"""Settings of the SFT and GRPO scripts: TRL's config classes plus the few fields this kit adds (open-r1 style).

Each script parses `(ScriptArguments, Config, trl.ModelConfig)` with `trl.TrlParser`, so a recipe is one YAML file
(`--config configs/sft/x.yaml`) whose keys are fields of these three classes, and any field can be overridden on the
command line (`--learning_rate 1e-5`). An unknown key is an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import trl

DEFAULT_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."
SELECTION_RULES = ("last", "accuracy", "accuracy_at_length")


@dataclass
class DataArguments(trl.ScriptArguments):
    """Where the training problems and the held-out evaluation problems come from (see train/data.py)."""

    dataset_sources: list[dict] = field(
        default_factory=list,
        metadata={"help": "Training data sources, each a mapping of train.data.Source fields (path, columns, "
                  "filters, weight). YAML only."},
    )
    dataset_seed: int = field(default=2025, metadata={"help": "Seed of the per-source sampling and the shuffles."})
    eval_file: str | None = field(
        default=None,
        metadata={"help": "Held-out problems (JSONL/parquet/CSV path or a datasets id) for the accuracy evaluation "
                  "run at every checkpoint; None: no accuracy evaluation."},
    )
    eval_split: str = field(default="test", metadata={"help": "Split of a hub eval_file (ignored for local files)."})
    eval_problem_column: str = field(default="problem")
    eval_answer_column: str = field(default="answer")
    eval_limit: int | None = field(default=64, metadata={"help": "Evaluate on the first N held-out problems."})


@dataclass
class AccuracyEvalArguments:
    """How checkpoints are evaluated (greedy generation graded by inference.answers) and which one is kept."""

    system_prompt: str | None = field(
        default=DEFAULT_SYSTEM_PROMPT,
        metadata={"help": "System message of every prompt (training and evaluation); None: no system message."},
    )
    accuracy_eval_max_new_tokens: int = field(
        default=1024, metadata={"help": "Token budget of each evaluation answer (truncated answers can be wrong)."}
    )
    accuracy_eval_batch_size: int = field(default=16)
    accuracy_eval_on_start: bool = field(
        default=False, metadata={"help": "Also evaluate before the first step (the baseline for selection)."}
    )
    select_checkpoint: str = field(
        default="last",
        metadata={"help": "Which checkpoint becomes the final model: 'last'; 'accuracy' (the most accurate); "
                  "'accuracy_at_length' (the shortest answers among checkpoints within selection_tolerance of the "
                  "starting accuracy)."},
    )
    selection_tolerance: float = field(
        default=0.01, metadata={"help": "Accuracy (a fraction) a checkpoint may lose and still be selected."}
    )

    def check_selection(self) -> None:
        if self.select_checkpoint not in SELECTION_RULES:
            raise ValueError(f"select_checkpoint: {self.select_checkpoint!r} is not one of {SELECTION_RULES}")


@dataclass
class SFTConfig(trl.SFTConfig, AccuracyEvalArguments):
    def __post_init__(self):
        super().__post_init__()
        self.check_selection()


@dataclass
class GRPOScriptArguments(DataArguments):
    max_prompt_length: int | None = field(
        default=512,
        metadata={"help": "Drop problems whose chat-formatted prompt is longer (tokens); trl 1.16 has no "
                  "max_prompt_length of its own."},
    )


@dataclass
class GRPOConfig(trl.GRPOConfig, AccuracyEvalArguments):
    reward_funcs: list[str] = field(
        default_factory=lambda: ["format", "cosine", "length"],
        metadata={"help": "Rewards, by name in train.rewards.REWARDS (summed with reward_weights)."},
    )
    cosine_max_len: int | None = field(
        default=None, metadata={"help": "Token length where the cosine reward bottoms out (None: max_completion_length)."}
    )
    cosine_min_value_wrong: float = -1.0
    cosine_max_value_wrong: float = -0.1
    cosine_min_value_correct: float = 0.1
    cosine_max_value_correct: float = 1.0
    soft_overlong_cache: int = field(default=256, metadata={"help": "DAPO soft overlong punishment window (tokens)."})
    repetition_ngram_size: int = 3
    repetition_max_penalty: float = -1.0

    def __post_init__(self):
        super().__post_init__()
        self.check_selection()
