"""Settings of the inference server: one YAML file (configs/inference/*.yaml) plus the competition's facts
(configs/competitions/<name>.yaml), with dotted command-line overrides such as `sampling.samples=4`.

Every section maps to a dataclass; an unknown or mistyped key, or a value of the wrong type (`temperature: hot`),
is an error that names the key and the file.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from inference.answers import AnswerSpec
from inference.engines import ENGINES
from inference.engines.base import STOP_RULES
from inference.mappings import dataclass_from_mapping
from inference.time_budget import TimePolicy
from inference.token_scheduler import TokenSchedule
from inference.tools import ToolSettings
from inference.voting import StopRule

REPO = Path(__file__).resolve().parents[1]
COMPETITIONS_DIR = REPO / "configs" / "competitions"


@dataclass
class Competition:
    name: str
    kaggle_slug: str
    answer: AnswerSpec
    fallback_answer: int
    problems: int
    total_seconds: float
    safety_margin_seconds: float
    startup_seconds: float
    per_call_seconds: float
    first_call_deadline: bool
    requires_id_column: bool
    server_class: str
    gateway_version: str
    hardware: dict

    @classmethod
    def load(cls, name_or_path: str | Path) -> "Competition":
        path = Path(name_or_path)
        if not path.suffix:
            path = COMPETITIONS_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            known = ", ".join(sorted(p.stem for p in COMPETITIONS_DIR.glob("*.yaml")))
            raise FileNotFoundError(f"competition: no config {path} (known competitions: {known})")
        d = _read_yaml(path)
        try:
            gw, t = d["gateway"], d["time"]
            return cls(
                name=d["name"],
                kaggle_slug=d["kaggle_slug"],
                answer=AnswerSpec.from_config(d["answer"]),
                fallback_answer=int(d["fallback_answer"]),
                problems=int(d["problems"]),
                total_seconds=float(t["total_seconds"]),
                safety_margin_seconds=float(t["safety_margin_seconds"]),
                startup_seconds=float(gw["startup_seconds"]),
                per_call_seconds=float(gw["per_call_seconds"]),
                first_call_deadline=bool(gw["first_call_deadline"]),
                requires_id_column=bool(gw["requires_id_column"]),
                server_class=gw["server_class"],
                gateway_version=str(gw["version"]),
                hardware=dict(d.get("hardware") or {}),
            )
        except KeyError as e:
            raise ValueError(f"{path}: missing key {e.args[0]!r}") from None


@dataclass
class Sampling:
    samples: int = 8  # samples launched per problem
    max_tokens: int = 16384
    temperature: float = 1.0
    top_p: float = 1.0
    min_p: float = 0.0
    stop_rule: str = "boxed_after_think"  # see inference.engines.base.STOP_RULES
    seed: int = 0

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise ValueError(f"sampling.samples must be ≥ 1, got {self.samples}")
        if self.max_tokens < 1:
            raise ValueError(f"sampling.max_tokens must be ≥ 1, got {self.max_tokens}")
        if self.stop_rule not in STOP_RULES:
            raise ValueError(f"sampling.stop_rule: {self.stop_rule!r} is not one of {', '.join(STOP_RULES)}")


@dataclass
class PromptVariant:
    name: str
    weight: int = 1  # share of the samples that get this variant
    system: str | None = None  # None: no system message
    user_prefix: str = ""
    user_suffix: str = ""


@dataclass
class Prompts:
    variants: list[PromptVariant] = field(
        default_factory=lambda: [PromptVariant(name="default", system="Please reason step by step, and put your "
                                               "final answer within \\boxed{}.")]
    )
    # Appended to the problem when set; {min}, {max} and {modulus} come from the competition's answer range.
    answer_reminder: str | None = None
    max_problem_chars: int = 20000  # longer problems are cut (head and tail kept) so they still fit the context
    format: str = "r1"  # the chat format (inference/formats.py): r1, python_block, tool_call, harmony
    format_options: dict = field(default_factory=dict)  # keyword arguments of that format


@dataclass
class Watchdog:
    stall_seconds: float = 120.0  # no new token for this long while samples run → restart the engine
    max_restarts: int = 2  # per run
    poll_seconds: float = 1.0  # how often the solver wakes up to check deadlines and the engine
    # predict answers at the problem's deadline plus at most this, whatever the engine is doing (server.py)
    answer_grace_seconds: float = 0.5


@dataclass
class Settings:
    competition: Competition
    engine: str = "vllm"
    model: str | None = None
    engine_args: dict = field(default_factory=dict)
    lora_path: str | None = None  # vllm: a peft LoRA adapter served on top of `model` (vLLM's LoRA)
    traces: str | None = None  # replay engine input
    virtual_clock: bool = False  # replay only: simulated time
    problems: str | None = None  # default problems file of the local gateway
    record_traces: str | None = None  # write every finished sample here (JSONL, the replay format)
    sampling: Sampling = field(default_factory=Sampling)
    prompts: Prompts = field(default_factory=Prompts)
    voting: StopRule = field(default_factory=StopRule)
    time: TimePolicy = field(default_factory=TimePolicy)
    watchdog: Watchdog = field(default_factory=Watchdog)
    tools: ToolSettings = field(default_factory=ToolSettings)  # the Python tool loop (inference/tools.py)
    # the seed's token scheduler: predicted length → max_tokens and time share (inference/token_scheduler.py)
    token_scheduler: TokenSchedule = field(default_factory=TokenSchedule)
    source: str = "<defaults>"  # the file these settings came from, for messages

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"{self.source}: engine {self.engine!r} is not one of {', '.join(ENGINES)}")
        if self.engine == "replay" and not self.traces:
            raise ValueError(f"{self.source}: engine 'replay' needs `traces` (a traces JSONL file)")
        if self.engine in ("vllm", "transformers") and not self.model:
            raise ValueError(f"{self.source}: engine {self.engine!r} needs `model` (a model directory)")
        spec = self.engine_args.get("speculative_config")
        if spec is not None:  # vLLM's own message for a bad one comes from deep inside its engine core
            if not isinstance(spec, dict) or not isinstance(spec.get("method"), str):
                raise ValueError(f"{self.source}: engine_args.speculative_config: expected a mapping with a `method` "
                                 f"(ngram, eagle, eagle3, …), got {spec!r}")
            if spec["method"].startswith("eagle") and not spec.get("model"):
                raise ValueError(f"{self.source}: engine_args.speculative_config: method {spec['method']!r} needs "
                                 "`model`, a draft model trained for the served one (ngram needs none)")
        if self.lora_path and self.engine != "vllm":
            raise ValueError(f"{self.source}: lora_path is served by the vllm engine only (engine {self.engine!r})")
        if self.virtual_clock and self.engine != "replay":
            raise ValueError(f"{self.source}: virtual_clock works only with the replay engine")


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


_KIND_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "text", dict: "a mapping",
               list: "a list"}


def _coerce(value: Any, hint: Any, name: str) -> Any:
    """`value` checked against a field's type hint (numbers widen to float, "1e-5" reads as a number, paths as
    text); a wrong type raises ValueError naming the field, e.g. `sampling.temperature: expected a number, got
    'hot'`. Types it does not know (nested dataclasses, Any) pass unchanged."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        expected = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, name)
            except ValueError:
                expected.append(_KIND_NAMES.get(typing.get_origin(arg) or arg, getattr(arg, "__name__", str(arg))))
        if type(None) in args:
            expected.append("nothing (null)")
        raise ValueError(f"{name}: expected {' or '.join(expected)}, got {value!r}")
    kind = origin or hint
    if kind not in _KIND_NAMES:
        return value
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, (str, os.PathLike)),
        dict: isinstance(value, dict),
        list: isinstance(value, list),
    }[kind]
    if kind is float and isinstance(value, str):
        try:
            return float(value)  # YAML 1.1 reads 1e-5 (no dot) as text
        except ValueError:
            pass
    if not ok:
        raise ValueError(f"{name}: expected {_KIND_NAMES[kind]}, got {value!r}")
    if kind is float:
        return float(value)
    if kind is str:
        return os.fspath(value)
    if kind is list and args and args[0] in _KIND_NAMES:
        return [_coerce(item, args[0], f"{name}[{i}]") for i, item in enumerate(value)]
    return value


def check_types(cls, data: Any, where: str) -> Any:
    """A mapping for dataclass `cls` with each known key's value checked (and widened) against the field's type."""
    if not isinstance(data, dict):
        return data  # dataclass_from_mapping names that error
    hints = typing.get_type_hints(cls)
    return {key: _coerce(value, hints[key], f"{where}.{key}") if key in hints else value
            for key, value in data.items()}


def _build(cls, data: Any, where: str):
    """Instantiate a dataclass from a mapping, naming the file and key of anything unknown or wrong."""
    file, _, section = where.rpartition(": ")  # "configs/x.yaml", "sampling"
    try:
        data = check_types(cls, data, section)
    except ValueError as e:
        raise ValueError(f"{file}: {e}" if file else str(e)) from None
    try:
        return dataclass_from_mapping(cls, data, where)
    except TypeError as e:
        raise ValueError(f"{where}: {e}") from None
    except ValueError as e:
        raise ValueError(str(e) if str(e).startswith(where) else f"{where}: {e}") from None


def _set_dotted(d: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    for p in parts[:-1]:
        d = d.setdefault(p, {})
        if not isinstance(d, dict):
            raise ValueError(f"override {key}: {p} is not a section")
    d[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """`sampling.samples=4` → ("sampling.samples", 4); the value is parsed as YAML."""
    if "=" not in text:
        raise ValueError(f"override {text!r}: expected KEY=VALUE, e.g. sampling.samples=4")
    key, value = text.split("=", 1)
    return key.strip(), yaml.safe_load(value)


def resolve_path(p: str | None, base: Path) -> str | None:
    """Relative paths in a config are relative to the repo root if they exist there, else to the config's folder."""
    if p is None or Path(p).is_absolute() or Path(p).exists():
        return p
    for root in (REPO, base):
        if (root / p).exists():
            return str(root / p)
    return p


def load_settings(path: str | Path | None = None, overrides: dict | None = None, **kwargs) -> Settings:
    """Read a settings YAML (or defaults), apply dotted `overrides` (the command line's `--set KEY=VALUE`) then
    keyword overrides of top-level keys. An error an override causes names `--set KEY`, not the file."""
    raw: dict = {}
    source = "<defaults>"
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"config: no such file {path}")
        raw = _read_yaml(path)
        source = str(path)
    overrides = dict(overrides or {})
    try:
        return _load(copy.deepcopy(raw), overrides, kwargs, source, path)
    except ValueError as e:
        error = e
    # Blame the override without which the settings load; else the file's own error stands.
    for key, value in overrides.items():
        try:
            _load(copy.deepcopy(raw), {k: v for k, v in overrides.items() if k != key}, kwargs, source, path)
        except (ValueError, OSError):
            continue
        rest = str(error).removeprefix(f"{source}: ")
        if rest.startswith(f"{key.split('.')[0]}: {key}"):  # "sampling: sampling.samples must be ≥ 1"
            rest = rest.split(": ", 1)[1]
        shown = value if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True).strip()
        shown = shown.removesuffix("\n...").strip()
        raise ValueError(f"--set {rest}" if rest.startswith(f"{key}:") else f"--set {key}={shown}: {rest}") from None
    raise error


def _load(raw: dict, overrides: dict, kwargs: dict, source: str, path: Path | None) -> Settings:
    for key, value in overrides.items():
        _set_dotted(raw, key, value)
    raw.update({k: v for k, v in kwargs.items() if v is not None})
    base = Path(path).parent if path is not None else REPO

    raw = dict(raw)
    competition = raw.pop("competition", "aimo3")
    sections = {
        "sampling": Sampling,
        "prompts": Prompts,
        "voting": StopRule,
        "time": TimePolicy,
        "watchdog": Watchdog,
        "tools": ToolSettings,
        "token_scheduler": TokenSchedule,
    }
    built: dict[str, Any] = {}
    for name, cls in sections.items():
        section = raw.pop(name, {}) or {}
        if name == "prompts" and "variants" in section:
            section = dict(section)
            section["variants"] = [
                _build(PromptVariant, v, f"{source}: prompts.variants[{i}]") for i, v in enumerate(section["variants"])
            ]
        built[name] = _build(cls, section, f"{source}: {name}")
    top = {f.name for f in dataclasses.fields(Settings)} - set(sections) - {"competition", "source"}
    unknown = sorted(set(raw) - top)
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(top | set(sections) | {'competition'}))}")
    try:
        raw = check_types(Settings, raw, "settings")
    except ValueError as e:
        raise ValueError(f"{source}: {str(e).removeprefix('settings.')}") from None
    for key in ("model", "traces", "problems"):
        if raw.get(key) is not None:
            raw[key] = resolve_path(raw[key], base)
    scheduler = built["token_scheduler"]
    scheduler.source = resolve_path(scheduler.source, base)
    try:
        scheduler.check_source()
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None
    comp = competition if isinstance(competition, Competition) else Competition.load(competition)
    return Settings(competition=comp, source=source, **raw, **built)
