"""Engines: where samples come from. Every engine implements `inference.engines.base.Engine`.

`make_engine(name, ...)` builds one by name so configs and command lines can choose it.
"""

from __future__ import annotations

from inference.engines.base import Engine, Sample, SampleRequest

ENGINES = ("vllm", "transformers", "replay")


def make_engine(name: str, **kwargs) -> Engine:
    """Build the engine called `name` ("vllm", "transformers" or "replay") with engine-specific keyword arguments."""
    if name == "vllm":
        from inference.engines.vllm_engine import VLLMEngine

        return VLLMEngine(**kwargs)
    if name == "transformers":
        from inference.engines.transformers_engine import TransformersEngine

        return TransformersEngine(**kwargs)
    if name == "replay":
        from inference.engines.replay import ReplayEngine

        return ReplayEngine(**kwargs)
    raise ValueError(f"engine: unknown engine {name!r}; choose one of {', '.join(ENGINES)}")


__all__ = ["ENGINES", "Engine", "Sample", "SampleRequest", "make_engine"]
