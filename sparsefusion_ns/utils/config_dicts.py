"""Configuration dataclasses ↔ JSON-ready dicts: the project's one way to (de)serialise a config.

A config class inherits :class:`DictConfig` and gets ``to_dict`` / ``from_dict``:

- ``to_dict`` lists the fields in declaration order; tuples become lists and nested dataclasses
  dicts, so ``json.dumps`` takes the result as it is;
- ``from_dict`` is its inverse: lists become tuples where the field is annotated as a tuple, dicts
  become the nested dataclass, a missing field keeps its default, and an unknown field is a
  ``ValueError`` naming it (a config written by a newer version, or a typo, never loads silently);
  strings become paths where the field is a path.
  The class's ``__post_init__`` validation runs as for any construction.

Why not diffusers' ``ConfigMixin``/``register_to_config`` (docs/architecture.md): it serialises the
``__init__`` arguments of a model class into one ``config.json`` per model, adds ``_class_name`` and
``_diffusers_version`` keys, ignores unknown keys with a warning and gives JSON lists back as
lists. Our configs are dataclasses that nerfstudio's command line (tyro) also reads, a teacher
folder stores all of its components' configs in one ``teacher_config.json``, and that format is
fixed by the folders already written; adopting the mixin would change the files and loosen the
checks.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any, Literal, TypeVar, Union

C = TypeVar("C")


def config_to_dict(config: Any) -> dict[str, Any]:
    """The fields of the dataclass ``config`` as a JSON-ready dict (see the module docstring)."""
    return {field.name: _to_json(getattr(config, field.name)) for field in dataclasses.fields(config)}


def config_from_dict(cls: type[C], data: Mapping[str, Any], unknown: Literal["error", "ignore"] = "error") -> C:
    """Build the dataclass ``cls`` from ``data`` (the inverse of :func:`config_to_dict`).

    ``unknown="ignore"`` drops fields ``cls`` does not have instead of refusing them (for records
    written by other tools, such as a teacher's provenance).
    """
    if not isinstance(data, Mapping):
        raise TypeError(f"{cls.__name__} needs a dict of its fields, got {type(data).__name__}")
    known = [field.name for field in dataclasses.fields(cls) if field.init]
    extra = sorted(set(data) - set(known))
    if extra and unknown == "error":
        raise ValueError(f"unknown {cls.__name__} fields {extra}; known fields: {sorted(known)}")
    hints = typing.get_type_hints(cls)
    return cls(**{name: _from_json(hints[name], value) for name, value in data.items() if name in known})


class DictConfig:
    """Mixin of the configuration dataclasses stored as JSON: ``to_dict`` and ``from_dict``."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of all fields (tuples become lists, nested configs dicts)."""
        return config_to_dict(self)

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
        """Inverse of :meth:`to_dict`; unknown fields are an error, missing ones keep their defaults."""
        return config_from_dict(cls, data)


def _to_json(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return config_to_dict(value)
    if isinstance(value, (tuple, list)):
        return [_to_json(item) for item in value]
    return value


def _from_json(hint: Any, value: Any) -> Any:
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return config_from_dict(hint, value)
    if typing.get_origin(hint) in (Union, types.UnionType) and value is not None:  # Optional[X]: convert as X
        (hint, *others) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if others:
            return value
    if typing.get_origin(hint) is tuple and isinstance(value, list):
        return tuple(value)
    if isinstance(hint, type) and issubclass(hint, PurePath) and isinstance(value, str):
        return hint(value)
    return value
