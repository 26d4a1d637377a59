"""The pydantic base of every config model: an unknown key is an error that names it, not a silently ignored setting."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """A config model that forbids unknown keys (a typo in a YAML file fails validation, naming the key)."""

    model_config = ConfigDict(extra="forbid")
