"""Settings of the SFT and GRPO scripts: TRL's config classes plus the few fields this kit adds (open-r1 style).

Each script parses `(DataArguments, Config, trl.ModelConfig)` with `trl.TrlParser`, so a recipe is one YAML file
(`--config configs/sft/x.yaml`) whose keys are fields of these three classes, and any field can be overridden on the
command line (`--learning_rate 1e-5`). An unknown key is an error, and every accepted key is used: the data flags
here (not trl.ScriptArguments, whose streaming/test-split flags this kit has no use for), LoRA/QLoRA from
trl.ModelConfig through peft and bitsandbytes (train/common.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import trl

DEFAULT_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."
SELECTION_RULES = ("last", "accuracy", "accuracy_at_length")


@dataclass
class DataArguments:
    """Where the training problems and the held-out evaluation problems come from (see train/data.py)."""

    dataset_sources: list[dict] = field(
        default_factory=list,
        metadata={"help": "Training data sources, each a mapping of train.data.Source fields (path, columns, "
                  "filters, weight). YAML only."},
    )
    dataset_name: str | None = field(
        default=None,
        metadata={"help": "One training source (a file or hub id with the default column names of train.data.Source: "
                  "problem, generation, answer); replaces dataset_sources."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub config of dataset_name."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split of dataset_name."})
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
    chat_format: str | None = field(
        default=None,
        metadata={"help": "SFT: render rows in this inference format (python_block, tool_call, harmony) as token ids "
                  "with tool outputs out of the loss (train/data.py); needed for tool-using traces."},
    )
    chat_format_options: dict = field(default_factory=dict, metadata={"help": "The format's options. YAML only."})
    train_on_tool_outputs: bool = field(default=False, metadata={"help": "SFT: keep tool outputs in the loss."})

    def sources(self) -> list[dict]:
        """The one source dataset_name names (it replaces the recipe's dataset_sources), else dataset_sources."""
        if self.dataset_name:
            return [{"path": self.dataset_name, "name": self.dataset_config, "split": self.dataset_train_split}]
        if self.dataset_config or self.dataset_train_split != "train":
            raise ValueError("dataset_config / dataset_train_split apply to dataset_name, which is not set; "
                             "in dataset_sources use each entry's name / split")
        return self.dataset_sources


@dataclass
class HardwareArguments:
    """The hardware a recipe is sized for (train/memory.py checks the plan against it); all None = a CPU recipe."""

    hardware_gpus: int | None = field(default=None, metadata={"help": "GPUs (one training process each)."})
    hardware_gpu_memory_gb: float | None = field(default=None, metadata={"help": "Memory per GPU, GiB."})
    hardware_accelerate_config: str | None = field(
        default=None, metadata={"help": "The accelerate launch config (gives the ZeRO stage and offload)."})
    hardware_model: str | None = field(
        default=None, metadata={"help": "Architecture to plan for: a hub id of train.memory.KNOWN_ARCHITECTURES or a "
                                "local model directory (default: model_name_or_path)."})


@dataclass
class AccuracyEvalArguments:
    """How checkpoints are evaluated (greedy or sampled answers graded by inference.grading) and which one is kept."""

    system_prompt: str | None = field(
        default=DEFAULT_SYSTEM_PROMPT,
        metadata={"help": "System message of every prompt (training and evaluation); None: no system message."},
    )
    accuracy_eval_max_new_tokens: int = field(
        default=1024, metadata={"help": "Token budget of each evaluation answer (truncated answers can be wrong)."}
    )
    accuracy_eval_samples: int = field(
        default=1, metadata={"help": "Answers sampled per problem; the accuracy is their mean (see its standard error)."}
    )
    accuracy_eval_temperature: float = field(
        default=0.0, metadata={"help": "Sampling temperature of the evaluation; 0: greedy (R1-distill models loop "
                               "greedily: sample, e.g. 0.6 with top_p 0.95 as DeepSeek recommends)."}
    )
    accuracy_eval_top_p: float = field(default=1.0)
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
        if self.accuracy_eval_samples < 1:
            raise ValueError(f"accuracy_eval_samples must be >= 1, got {self.accuracy_eval_samples}")
        if self.accuracy_eval_samples > 1 and self.accuracy_eval_temperature <= 0:
            raise ValueError("accuracy_eval_samples > 1 needs accuracy_eval_temperature > 0 (greedy answers repeat)")


@dataclass
class SFTConfig(trl.SFTConfig, AccuracyEvalArguments, HardwareArguments):
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
class GRPOConfig(trl.GRPOConfig, AccuracyEvalArguments, HardwareArguments):
    reward_funcs: list[str] = field(
        default_factory=lambda: ["format", "cosine", "length"],
        metadata={"help": "Rewards, by name in train.rewards.REWARDS (summed with reward_weights)."},
    )
    cosine_max_len: int | None = field(
        default=None, metadata={"help": "Token length where the cosine reward bottoms out (None: from cosine_max_chars, "
                                "else max_completion_length)."}
    )
    cosine_max_chars: int | None = field(
        default=None, metadata={"help": "The same in characters (the seed's unit: 30000), converted to tokens with the "
                                "chars_per_token of the SFT traces in <model_name_or_path>/data_report.json."}
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
