"""Reading a run's ``config.yml`` without letting the file run code.

nerfstudio writes a run's configuration with ``yaml.dump`` and reads it back with ``yaml.Loader``,
which builds any Python object a file names: ``!!python/object/apply:os.system ["…"]`` runs a
shell command. :func:`load_run_config` reads the same files with :class:`RunConfigLoader`, which
builds only what nerfstudio writes into them:

- configuration classes (dataclasses) of nerfstudio and sparsefusion_ns (``!!python/object:``);
- references to classes of those packages and of ``torch.optim`` (``!!python/name:``, the
  ``_target`` fields), and to nerfstudio's default ``collate_fn``;
- paths, enums of those packages, tuples, and generic classes such as
  ``VanillaDataManager[MaskedImageDataset]``.

Anything else is refused before it is imported or called, with :class:`UnsafeRunConfigError`.
nerfstudio's own commands (``ns-export``, ``ns-viewer``, ``ns-eval``, ``ns-train --load-config``)
still load config files unrestricted: they trust them.
"""

from __future__ import annotations

import dataclasses
import enum
import operator
import pathlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from yaml.composer import Composer
from yaml.constructor import ConstructorError, FullConstructor
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import Resolver
from yaml.scanner import Scanner

if TYPE_CHECKING:
    from nerfstudio.engine.trainer import TrainerConfig

CONFIG_PACKAGES = ("nerfstudio", "sparsefusion_ns")
"""Packages whose configuration classes, class references and enums a config file may name."""
CLASS_REFERENCE_MODULES = ("torch.optim",)
"""Further modules whose classes a config file may reference (never build): optimisers."""
FUNCTION_REFERENCES = frozenset({"nerfstudio.data.utils.nerfstudio_collate.nerfstudio_collate"})
"""Functions a config file may reference (a datamanager's default ``collate_fn``)."""
_GETITEM = frozenset({"_operator.getitem", "operator.getitem"})


class RunConfigError(ValueError):
    """A run's config.yml is missing, unreadable, or not a nerfstudio training config."""


class UnsafeRunConfigError(RunConfigError):
    """A config file names something other than configuration objects; nothing in it was run."""


def _in_package(module: str, packages) -> bool:
    return any(module == package or module.startswith(package + ".") for package in packages)


def _importable(module: str) -> bool:
    """Modules a config file may make us import: the config packages (not their command-line
    scripts, which are never part of a config), torch's optimisers, pathlib and operator."""
    if _in_package(module, CONFIG_PACKAGES):
        return "scripts" not in module.split(".")
    return (
        _in_package(module, CLASS_REFERENCE_MODULES)
        or _in_package(module, ("pathlib",))
        or module
        in (
            "_operator",
            "operator",
        )
    )


def _is_config_class(value: Any) -> bool:
    return (
        isinstance(value, type) and dataclasses.is_dataclass(value) and _in_package(value.__module__, CONFIG_PACKAGES)
    )


def _is_generic_class(value: Any) -> bool:
    return (
        isinstance(value, type)
        and hasattr(value, "__class_getitem__")
        and _in_package(value.__module__, CONFIG_PACKAGES)
    )


class _RunConfigConstructor(FullConstructor):
    """PyYAML's Python-object constructor, restricted to what nerfstudio writes into config files."""

    def _refuse(self, name: str, why: str, mark) -> ConstructorError:
        return ConstructorError(None, None, f"refused to build {name!r}: {why}", mark)

    def find_python_module(self, name, mark, unsafe=False):
        raise self._refuse(name, "config files never name modules", mark)

    def find_python_name(self, name, mark, unsafe=False):
        module = name.rsplit(".", 1)[0] if "." in name else "builtins"
        if not _importable(module):
            why = f"module {module!r} is not a configuration module of nerfstudio or sparsefusion_ns"
            raise self._refuse(name, why, mark)
        return super().find_python_name(name, mark, unsafe=True)  # imports an allowed module

    def construct_python_name(self, suffix, node):
        value = super().construct_python_name(suffix, node)
        is_class = isinstance(value, type) and (
            _in_package(value.__module__, CONFIG_PACKAGES) or _in_package(value.__module__, CLASS_REFERENCE_MODULES)
        )
        if not (is_class or suffix in FUNCTION_REFERENCES):
            why = "only classes of nerfstudio, sparsefusion_ns and torch.optim may be named"
            raise self._refuse(suffix, why, node.start_mark)
        return value

    def make_python_instance(self, suffix, node, args=None, kwds=None, newobj=False, unsafe=False):
        args, kwds = list(args or []), dict(kwds or {})
        target = self.find_python_name(suffix, node.start_mark)
        if newobj:  # !!python/object: and !!python/object/new: create without calling the class
            if not _is_config_class(target) or args or kwds:
                why = "only configuration classes (dataclasses) of nerfstudio and sparsefusion_ns are built"
                raise self._refuse(suffix, why, node.start_mark)
            return target.__new__(target)
        # !!python/object/apply: calls its target
        if isinstance(target, type) and issubclass(target, pathlib.PurePath) and not kwds:
            return target(*args)
        is_enum = isinstance(target, type) and issubclass(target, enum.Enum)
        if is_enum and _in_package(target.__module__, CONFIG_PACKAGES):
            return target(*args)
        if suffix in _GETITEM and len(args) == 2 and _is_generic_class(args[0]):
            parameters = args[1] if isinstance(args[1], tuple) else (args[1],)
            if all(isinstance(parameter, type) for parameter in parameters):
                return operator.getitem(*args)
        raise self._refuse(suffix, "only paths, enums and generic classes are built by calling", node.start_mark)

    def set_python_instance_state(self, instance, state, unsafe=False):
        super().set_python_instance_state(instance, state, unsafe=False)  # no dunder attributes


_RunConfigConstructor.add_multi_constructor(
    "tag:yaml.org,2002:python/object:", _RunConfigConstructor.construct_python_object
)
_RunConfigConstructor.add_multi_constructor(
    "tag:yaml.org,2002:python/object/new:", _RunConfigConstructor.construct_python_object_new
)
_RunConfigConstructor.add_multi_constructor(
    "tag:yaml.org,2002:python/object/apply:", _RunConfigConstructor.construct_python_object_apply
)


class RunConfigLoader(Reader, Scanner, Parser, Composer, _RunConfigConstructor, Resolver):
    """A YAML loader for nerfstudio run configs that builds configuration objects only (module docstring)."""

    def __init__(self, stream) -> None:
        Reader.__init__(self, stream)
        Scanner.__init__(self)
        Parser.__init__(self)
        Composer.__init__(self)
        _RunConfigConstructor.__init__(self)
        Resolver.__init__(self)


def load_run_config(path: Path) -> TrainerConfig:
    """The ``TrainerConfig`` of a run's ``config.yml``, read with :class:`RunConfigLoader`."""
    from nerfstudio.engine.trainer import TrainerConfig

    path = Path(path)
    if not path.is_file():
        raise RunConfigError(
            f"{path} does not exist. Pass the config.yml that ns-train wrote next to the run's nerfstudio_models/ "
            "folder."
        )
    try:
        config = yaml.load(path.read_text(), Loader=RunConfigLoader)
    except ConstructorError as error:
        where = f" (line {error.problem_mark.line + 1})" if error.problem_mark is not None else ""
        raise UnsafeRunConfigError(
            f"Refused to load {path}{where}: {error.problem}. A run's config.yml may only build the configuration "
            "classes of nerfstudio and sparsefusion_ns (with paths, tuples and enums); anything else could run "
            "code on this machine, so nothing in the file was run. Use the config.yml that ns-train wrote; if "
            "you did not write this file, do not open it with nerfstudio's own commands either (ns-export, "
            "ns-viewer and ns-eval run whatever a config file names)."
        ) from None
    except yaml.YAMLError as error:
        raise RunConfigError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(config, TrainerConfig):
        raise RunConfigError(
            f"{path} is not a nerfstudio training config (the config.yml ns-train writes for a run), "
            f"it holds a {type(config).__name__}."
        )
    return config
