"""Settings of the SFT and GRPO scripts: TRL's config classes plus the few fields this kit adds (open-r1 style).

Each script parses `(DataArguments, Config, trl.ModelConfig)` with `trl.TrlParser`, so a recipe is one YAML file
(`--config configs/sft/x.yaml`) whose keys are fields of these three classes, and any field can be overridden on the
command line (`--learning_rate 1e-5`). An unknown key is an error, and every accepted key is used: the data flags
here (not trl.ScriptArguments, whose streaming/test-split flags this kit has no use for), LoRA/QLoRA from
trl.ModelConfig through peft and bitsandbytes (train/common.py).
"""

from __future__ import annotations

import enum
import sys
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

import trl
import yaml

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
    force_memory: bool = field(
        default=False, metadata={"help": "Train even when the memory plan says the run does not fit (the plan is an "
                                 "estimate): the plan and the risk are printed instead of an error."})


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
        if self.max_length is not None and self.max_length < 1:
            raise RecipeError(f"max_length: must be a positive number of tokens, got {self.max_length}")


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
    prompt_suffix: str | None = field(
        default=None, metadata={"help": "Text added (after a space) to every user turn of training and held-out "
                                "prompts: the served prompt's answer reminder, so GRPO trains on the prompt it is "
                                "served with (configs/inference/aimo3.yaml: prompts.answer_reminder)."}
    )
    soft_overlong_cache: int = field(default=256, metadata={"help": "DAPO soft overlong punishment window (tokens)."})
    repetition_ngram_size: int = 3
    repetition_max_penalty: float = -1.0
    # The seed's behaviour (trl's default too): a truncated completion trains as a wrong answer.
    mask_truncated_completions: bool = False
    rollout_tools: dict | None = field(
        default=None, metadata={"help": "Generate with the Python tool in the kit's sandbox: the chat format and tool "
                                "settings of the rollouts (train/grpo_tools.py); tool outputs out of the loss. "
                                "YAML only."}
    )

    def __post_init__(self):
        super().__post_init__()
        self.check_selection()
        from train.rewards import REWARDS

        unknown = [n for n in self.reward_funcs if n not in REWARDS]
        if unknown:
            raise RecipeError(f"reward_funcs: unknown {unknown}; known: {sorted(REWARDS)}")
        for name in ("cosine_max_len", "cosine_max_chars", "max_completion_length", "num_generations"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise RecipeError(f"{name}: must be >= 1, got {value}")
        if self.rollout_tools is not None:
            from train.grpo_tools import RolloutTools

            try:
                RolloutTools.from_mapping(self.rollout_tools)
            except ValueError as e:
                raise RecipeError(str(e)) from None
            if self.use_vllm:
                raise RecipeError("rollout_tools: rollouts run through the kit's transformers engine; set use_vllm: "
                                  "false")


# --- recipe files: every value type-checked before anything loads -------------------------------------------------


class RecipeError(ValueError):
    """A recipe key or value that cannot be used; the message names the field."""


POSITIVE = ("learning_rate", "max_length", "max_completion_length", "max_prompt_length", "num_generations",
            "per_device_train_batch_size", "gradient_accumulation_steps", "num_train_epochs", "cosine_max_len",
            "cosine_max_chars", "hardware_gpus", "hardware_gpu_memory_gb", "temperature", "lora_r",
            "accuracy_eval_max_new_tokens", "accuracy_eval_batch_size", "save_steps", "logging_steps")


def _accepts(hint, value) -> bool:
    """Whether `value` (as YAML gives it) is an instance of the dataclass field type `hint`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is typing.Any or hint is None and value is None:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(a, value) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is typing.Literal:
        return value in args
    if origin is list or hint is list:
        return isinstance(value, list) and (not args or all(_accepts(args[0], v) for v in value))
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return isinstance(value, hint) or value in {e.value for e in hint}
    return True  # a type this check does not know: left to the parser


def _type_name(hint) -> str:
    return str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")


def check_recipe(recipe: dict, classes: tuple, source: str = "recipe") -> None:
    """Raise RecipeError naming the first key of `recipe` that no class has, whose value has the wrong type or is out
    of range, or a reward name train.rewards does not know."""
    hints, choices = {}, {}
    for cls in classes:
        resolved = typing.get_type_hints(cls)
        for f in fields(cls):
            hints.setdefault(f.name, []).append(resolved.get(f.name, typing.Any))
            if f.metadata.get("choices"):
                choices[f.name] = f.metadata["choices"]
    for key, value in recipe.items():
        if key == "env":
            continue
        if key not in hints:
            raise RecipeError(f"{source}: unknown key {key!r}")
        if not any(_accepts(h, value) for h in hints[key]):
            raise RecipeError(f"{source}: {key}: {value!r} is not {' or '.join(_type_name(h) for h in hints[key])}")
        if key in choices and value not in choices[key]:
            raise RecipeError(f"{source}: {key}: {value!r} is not one of {choices[key]}")
        if key in POSITIVE and value is not None and value <= 0:
            raise RecipeError(f"{source}: {key}: must be > 0, got {value}")
    if "reward_funcs" in recipe:
        from train.rewards import REWARDS

        unknown = [n for n in recipe["reward_funcs"] if n not in REWARDS]
        if unknown:
            raise RecipeError(f"{source}: reward_funcs: unknown {unknown}; known: {sorted(REWARDS)}")
        weights = recipe.get("reward_weights")
        if weights is not None and len(weights) != len(recipe["reward_funcs"]):
            raise RecipeError(f"{source}: reward_weights: {len(weights)} weights for {len(recipe['reward_funcs'])} "
                              "reward_funcs")


def recipe_classes(recipe: dict) -> tuple:
    """The parser dataclasses of a recipe: GRPO's when it names rewards or generations, else SFT's."""
    from trl import ModelConfig

    if "reward_funcs" in recipe or "num_generations" in recipe:
        return GRPOScriptArguments, GRPOConfig, ModelConfig
    return DataArguments, SFTConfig, ModelConfig


def read_recipe(path: str | Path) -> dict:
    """The YAML mapping of a recipe file; RecipeError when it is missing or not a mapping."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"--config: {path} does not exist")
    try:
        recipe = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: not YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(recipe, dict):
        raise RecipeError(f"{path}: not a YAML mapping of recipe keys")
    return recipe


def load_recipe(path: str | Path) -> dict:
    """A checked recipe's keys with the defaults of every field of its parser's dataclasses filled in."""
    recipe = read_recipe(path)
    classes = recipe_classes(recipe)
    check_recipe(recipe, classes, str(path))
    settings = {}
    for cls in classes:
        for f in fields(cls):
            if f.default is not MISSING:
                settings[f.name] = f.default
            elif f.default_factory is not MISSING:
                settings[f.name] = f.default_factory()
    return settings | recipe


class RecipeParser(trl.TrlParser):
    """trl's parser, with the recipe file type-checked first (trl sets YAML values as argparse defaults, which
    argparse never converts or checks)."""

    def parse_args_and_config(self, args=None, *rest, **kwargs):
        argv = list(sys.argv[1:] if args is None else args)
        if "--config" in argv and argv.index("--config") + 1 < len(argv):
            path = argv[argv.index("--config") + 1]
            check_recipe(read_recipe(path), tuple(self.dataclass_types), path)
        return super().parse_args_and_config(argv, *rest, **kwargs)


def run_main(main, parser: RecipeParser) -> None:
    """Parse and run a training script's main; a bad recipe or flag is one line on stderr and exit 2."""
    try:
        parsed = parser.parse_args_and_config()
    except (RecipeError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except ValueError as e:  # trl/transformers' own __post_init__ checks of a value
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        sys.exit(2)
    main(*parsed)
