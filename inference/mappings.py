"""Settings dataclasses from YAML mappings, strictly: a misspelt key is an error that names the key and the section."""

from __future__ import annotations

import dataclasses
from typing import Any


def dataclass_from_mapping(cls, data: Any, where: str):
    """`cls(**data)`, after checking that `data` is a mapping whose keys are all fields of `cls`.

    `where` names the section in messages ("voting", "configs/x.yaml: sampling").
    """
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {data!r}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(map(str, unknown))}; known: {', '.join(sorted(known))}")
    return cls(**data)
