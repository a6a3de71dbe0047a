"""Base class for every typed config section.

Each section is a pydantic model that forbids unknown keys; a field's default and its one-line
description live on the field, so every default exists in exactly one place.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A config section: unknown keys and wrong types are errors (rlft.config names them)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())
