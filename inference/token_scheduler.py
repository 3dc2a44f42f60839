"""The seed's token scheduler as a policy option: a problem's predicted generation length sets its max_tokens and
scales its time share.

A length regressor (train/token_scheduler.py: problem text → expected tokens of a sample) or a predictions file
gives each problem a predicted length `p`. With the scheduler on (`token_scheduler.source` in an inference config):

- max_tokens = min_tokens + f · (max_tokens − min_tokens), f = clip((p − lo) / (hi − lo), 0, 1), where lo and hi
  are the 10th and 90th percentiles of the lengths the regressor was trained on (the seed: 10,500 … 13,300);
- the problem's time budget × (p / mean p of the run's problems so far, this one included) ** time_power, within
  [0.5, 2] (0: the time policy's own share).

`source` is either the folder train/token_scheduler.py wrote (the model runs on each problem text; what the server
uses, as the seed did) or a predictions JSON (`predictions.json` in that folder, or `python -m
train.token_scheduler oracle` on traces): {"lo", "hi", "predictions": {problem text or id: tokens}}, which the
simulator reads without loading a model. A problem the file does not know keeps the config's max_tokens and share.
The same Predictor code runs it for every engine (inference/server.py).
"""

from __future__ import annotations

import json
import logging
import math
import threading
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

META_FILE = "token_scheduler.json"  # in a model folder: how to turn the regressor's output into tokens
PREDICTIONS_FILE = "predictions.json"
WEIGHT_RANGE = (0.5, 2.0)  # a prediction may halve or double a problem's share, no more


@dataclass
class TokenSchedule:
    source: str | None = None  # None: off; a model folder of train/token_scheduler.py or a predictions JSON
    min_tokens: int = 10500  # max_tokens of a problem predicted at or below the training lengths' 10th percentile
    max_tokens: int = 13300  # ... at or above their 90th percentile
    time_power: float = 0.0  # time share × (predicted / run's mean predicted) ** time_power; 0: unchanged

    def __post_init__(self) -> None:
        if self.min_tokens < 1:
            raise ValueError(f"token_scheduler.min_tokens must be ≥ 1, got {self.min_tokens}")
        if self.max_tokens < self.min_tokens:
            raise ValueError(f"token_scheduler.max_tokens ({self.max_tokens}) is below token_scheduler.min_tokens "
                             f"({self.min_tokens})")
        if not self.time_power >= 0:
            raise ValueError(f"token_scheduler.time_power must be ≥ 0, got {self.time_power}")

    def check_source(self) -> None:
        """A source that is neither a model folder with token_scheduler.json nor a predictions JSON is an error."""
        if self.source is None:
            return
        path = Path(self.source)
        if not path.exists():
            raise ValueError(f"token_scheduler.source: no such file or folder {self.source}")
        if path.is_dir() and not (path / META_FILE).exists():
            raise ValueError(f"token_scheduler.source: {self.source} has no {META_FILE} (not a folder written by "
                             "train/token_scheduler.py)")


class LengthModel:
    """Predicted tokens per problem, from a trained regressor folder or a predictions JSON; thread-safe, cached."""

    def __init__(self, source: str) -> None:
        path = Path(source)
        self.source = source
        self._lock = threading.Lock()
        self._cache: dict[str, float] = {}
        if path.is_dir():
            meta = json.loads((path / META_FILE).read_text())
            self.meta = meta
            self.table: dict[str, float] = {}
            self._load_model()  # now, not inside the first problem's time
        else:
            try:
                meta = json.loads(path.read_text())
                self.table = {str(k): float(v) for k, v in meta["predictions"].items()}
                float(meta["lo"]), float(meta["hi"])
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                raise ValueError(f"token_scheduler.source: {source} is not a predictions JSON with lo, hi and "
                                 f"predictions ({e!r})") from None
            self.meta = meta
        self.lo, self.hi = float(meta["lo"]), float(meta["hi"])

    def predict(self, problem_id: str, problem: str) -> float | None:
        """Expected tokens of a sample of this problem; None when a predictions file does not know it."""
        if self.table:
            # by text, then by id ("pid#2": the simulator's second copy of pid)
            for key in (problem, problem_id, problem_id.split("#")[0]):
                if key in self.table:
                    return self.table[key]
            return None
        with self._lock:
            if problem not in self._cache:
                self._cache[problem] = self._run_model(problem)
            return self._cache[problem]

    def _load_model(self) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self._tokenizer = AutoTokenizer.from_pretrained(self.source)
        self._model = AutoModelForSequenceClassification.from_pretrained(self.source).eval()

    def _run_model(self, problem: str) -> float:
        import torch

        enc = self._tokenizer(problem, truncation=True, max_length=int(self.meta["max_problem_tokens"]),
                              return_tensors="pt")
        with torch.no_grad():
            z = float(self._model(**enc).logits.reshape(-1)[0])
        return math.exp(z * self.meta["std"] + self.meta["mean"])  # the regressor learns standardized log tokens


_MODELS: dict[str, LengthModel] = {}  # one per source for the process (the simulator builds a Predictor per run)
_MODELS_LOCK = threading.Lock()


def length_model(source: str) -> LengthModel:
    with _MODELS_LOCK:
        if source not in _MODELS:
            _MODELS[source] = LengthModel(source)
        return _MODELS[source]


class Scheduler:
    """One run's token scheduler: per problem, (max_tokens, time weight) from its predicted length."""

    def __init__(self, schedule: TokenSchedule) -> None:
        self.schedule = schedule
        self.model = length_model(schedule.source)
        self.predicted: list[float] = []  # this run's predictions so far
        self._missing_logged = False

    def max_tokens(self, predicted: float) -> int:
        s, span = self.schedule, max(self.model.hi - self.model.lo, 1e-9)
        f = min(1.0, max(0.0, (predicted - self.model.lo) / span))
        return int(round(s.min_tokens + f * (s.max_tokens - s.min_tokens)))

    def plan(self, problem_id: str, problem: str) -> tuple[int | None, float]:
        """(max_tokens, time weight) of the problem starting now; (None, 1.0): the config's own."""
        predicted = self.model.predict(problem_id, problem)
        if predicted is None:
            if not self._missing_logged:
                log.warning("token scheduler: %s has no prediction for %s (and maybe others): config max_tokens",
                            self.model.source, problem_id)
                self._missing_logged = True
            return None, 1.0
        self.predicted.append(predicted)
        weight = 1.0
        if self.schedule.time_power > 0:
            mean = sum(self.predicted) / len(self.predicted)
            weight = min(WEIGHT_RANGE[1], max(WEIGHT_RANGE[0], (predicted / mean) ** self.schedule.time_power))
        return self.max_tokens(predicted), weight
