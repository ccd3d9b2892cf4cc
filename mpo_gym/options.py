"""Command-line options generated from config dataclasses, and ``--config`` files.

Each dataclass field becomes ``--field-name`` with the field's line of the class docstring's
``Attributes:`` section as its help text, its default (of *that* class: GRPO's ``group_size``
default is 8, not MPO's 1) and, for fields with a fixed set of values, the choices. Booleans
are strict: ``--flag``, ``--flag true`` or ``--flag false`` (also ``1/0``, ``yes/no``);
anything else is an error.

``--config FILE`` (YAML or JSON) sets options from a file whose keys are the flag names, with
dashes or underscores (TRL's convention); flags given on the command line override the file.
A run's ``config.json`` is accepted back: its nested ``agent_kwargs`` are read as agent
options, and record-only keys (``resolved_*``, ``train_split``, ``eval_split``) are ignored.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from .errors import ConfigError, did_you_mean

__all__ = [
    "CHOICES",
    "Items",
    "RECORD_ONLY_KEYS",
    "add_dataclass_arguments",
    "field_docs",
    "load_config_file",
    "parse_bool",
    "pre_scan",
    "pre_scan_all",
    "split_items",
]

# Fields with a fixed set of values (shared by every config class that has the field).
CHOICES: dict[str, tuple[str, ...]] = {
    "dtype": ("auto", "bfloat16", "float32"),
    "device": ("auto", "cpu", "cuda"),
    "value_head": ("head", "separate"),
    "loss_aggregation": ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"),
    "baseline": ("mean", "loo"),
    "ratio_source": ("mtp", "backbone"),
    "advantage": ("gae", "group"),
    "report_to": ("none", "tensorboard", "wandb", "trackio"),
}

# Keys of a run's config.json that record what was resolved, not options to set.
RECORD_ONLY_KEYS = ("train_split", "eval_split", "mpo_gym_version")


def field_docs(cls: type) -> dict[str, str]:
    """``field -> help line`` from the ``Attributes:`` sections of ``cls`` and its bases."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        text = klass.__dict__.get("__doc__") or ""
        if "Attributes:" not in text:
            continue
        body = text.split("Attributes:", 1)[1]
        current, indent = None, None
        for line in body.splitlines():
            if not line.strip():
                current = None
                continue
            stripped = line.lstrip()
            depth = len(line) - len(stripped)
            match = re.match(r"(\w+): (.*)", stripped)
            if match and (indent is None or depth <= indent):
                indent = depth
                current = match.group(1)
                docs[current] = match.group(2).strip()
            elif current is not None and indent is not None and depth > indent:
                docs[current] += " " + stripped
            else:
                current = None
    return {k: v.replace("``", "") for k, v in docs.items()}


_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


def parse_bool(text: str | bool) -> bool:
    """Strict boolean: true/false, 1/0, yes/no, on/off (any case); anything else is an error."""
    if isinstance(text, bool):
        return text
    low = str(text).strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _json_dict(text: str | dict[str, Any]) -> dict[str, Any]:
    if isinstance(text, dict):
        return text
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc.msg}): {text!r}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def _converter(kind: type) -> Callable[[Any], Any]:
    if kind is bool:
        return parse_bool
    if kind is dict:
        return _json_dict
    if kind is float:
        def to_float(text: Any) -> float:
            try:
                return float(text)
            except (TypeError, ValueError) as exc:
                raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from exc
        return to_float
    if kind is int:
        def to_int(text: Any) -> int:
            if isinstance(text, bool) or (isinstance(text, float) and not text.is_integer()):
                raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}")
            try:
                return int(text)
            except (TypeError, ValueError) as exc:
                raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from exc
        return to_int
    return str


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _kind(f: dataclasses.Field[Any]) -> type:
    value = _default(f)
    if isinstance(value, bool):
        return bool
    for kind in (int, float, dict, tuple):
        if isinstance(value, kind):
            return kind
    return str


class Items(argparse.Action):
    """A repeatable option whose values may also be comma-separated: ``--import a --import b,c``
    gives ``["a", "b", "c"]`` (``join``: ``"a,b,c"``, for fields that hold a comma-separated
    string)."""

    def __init__(self, option_strings: list[str], dest: str, join: bool = False, **kw: Any):
        super().__init__(option_strings, dest, **kw)
        self.join = join

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
        old = getattr(namespace, self.dest, None)
        items = [] if old is None or old == self.default else split_items(old)
        items += split_items(values)
        setattr(namespace, self.dest, ",".join(items) if self.join else items)


def split_items(value: Any) -> list[str]:
    """The non-empty comma-separated items of a string, or of each string of a sequence."""
    parts = [value] if isinstance(value, str) else list(value or ())
    return [item.strip() for part in parts for item in str(part).split(",") if item.strip()]


def add_dataclass_arguments(
    parser: argparse.ArgumentParser | Any,
    cls: type,
    *,
    skip: Iterable[str] = (),
    dest_prefix: str = "",
    defaults_none: bool = False,
    flags: Mapping[str, tuple[str, ...]] | None = None,
    choices: Mapping[str, Iterable[str]] | None = None,
    repeatable: Iterable[str] = (),
    primary: Mapping[str, str] | None = None,
    shown_defaults: Mapping[str, Any] | None = None,
    show_default: bool = True,
) -> dict[str, str]:
    """Add ``--field`` options for the fields of ``cls``; returns ``field -> dest``.

    Args:
        skip: fields not to add.
        dest_prefix: prefix of the argparse ``dest`` (``"agent__"`` for agent fields).
        defaults_none: the parsed default is ``None`` (only flags given are set) while the help
            still shows the class default.
        flags: extra flag spellings per field (aliases).
        choices: extra or overriding choices per field.
        repeatable: string fields holding comma-separated items whose flag may be repeated
            (tuple fields always are).
        shown_defaults: defaults to show in the help (and parse to) instead of the class's.
        primary: the flag shown first for a field (``{"imports": "--import"}``); the generated
            ``--field-name`` stays as an alias.
        show_default: show the default in the help (off for options whose default depends on
            the agent that takes them).
    """
    docs = field_docs(cls)
    all_choices = {**CHOICES, **{k: tuple(v) for k, v in (choices or {}).items()}}
    dests: dict[str, str] = {}
    repeatable = set(repeatable)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        kind, default = _kind(f), _default(f)
        if shown_defaults and f.name in shown_defaults:
            default = shown_defaults[f.name]
        names = ["--" + f.name.replace("_", "-"), *((flags or {}).get(f.name, ()))]
        if primary and f.name in primary:
            names = [primary[f.name], *(n for n in names if n != primary[f.name])]
        help_text = docs.get(f.name, "").rstrip(".")
        shown = json.dumps(default) if kind is dict else (",".join(map(str, default)) if kind is tuple else default)
        if show_default:
            help_text = f"{help_text} (default: {shown})" if help_text else f"(default: {shown})"
        dest = dest_prefix + f.name
        kwargs: dict[str, Any] = {
            "dest": dest, "type": _converter(kind), "default": None if defaults_none else default,
            "help": help_text.replace("%", "%%"),
        }
        if kind is tuple or f.name in repeatable:
            kwargs.update(action=Items, type=None, join=kind is not tuple, metavar="A[,B...]")
        elif kind is bool:
            kwargs.update(nargs="?", const=True, metavar="{true,false}")
        elif f.name in all_choices:
            kwargs["choices"] = all_choices[f.name]
            kwargs["metavar"] = "{" + ",".join(all_choices[f.name]) + "}"
        else:
            kwargs["metavar"] = {int: "N", float: "X", dict: "JSON"}.get(kind, "STR")
        parser.add_argument(*names, **kwargs)
        dests[f.name] = dest
    return dests


def load_config_file(path: str | Path, flag: str = "--config") -> dict[str, Any]:
    """The mapping in a YAML or JSON file (keys not yet checked); user errors as ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{flag} {path}: no such file")
    text = path.read_text()
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{flag} {path}, line {exc.lineno}: not valid JSON ({exc.msg})") from exc
    except Exception as exc:  # yaml.YAMLError: the message names line and column
        raise ConfigError(f"{flag} {path}: not valid YAML ({' '.join(str(exc).split())})") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{flag} {path}: expected a mapping of option names to values")
    return data


def file_defaults(
    data: Mapping[str, Any], dests: Mapping[str, str], parser: argparse.ArgumentParser,
    source: str, ignore: Iterable[str] = (),
) -> dict[str, Any]:
    """``dest -> value`` for a config file's keys (dashes or underscores), converted and checked.

    ``dests`` maps option names (underscored) to argparse dests. Unknown keys are an error
    with close matches; values go through the option's own type (and choices).
    """
    actions = {a.dest: a for a in parser._actions}
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name in ignore or name.startswith("resolved_"):
            continue
        if name not in dests:
            flag_names = sorted(n.replace("_", "-") for n in dests)
            raise ConfigError(
                f"{source}: unknown option {key!r}{did_you_mean(name.replace('_', '-'), flag_names)}"
            )
        action: Any = actions[dests[name]]
        if isinstance(action, Items):
            value = ",".join(split_items(value)) if action.join else split_items(value)
        elif value is not None and action.type is not None and not (isinstance(value, dict) and action.type is str):
            try:
                value = action.type(value)
            except argparse.ArgumentTypeError as exc:
                raise ConfigError(f"{source}: {key}: {exc}") from exc
        if action.choices is not None and value is not None and value not in action.choices:
            raise ConfigError(
                f"{source}: {key}: {value!r} is not one of {', '.join(map(str, action.choices))}"
            )
        out[dests[name]] = value
    return out


def pre_scan(argv: list[str], *names: str) -> dict[str, str | None]:
    """Values of ``--name VALUE`` / ``--name=VALUE`` in ``argv`` before the full parse."""
    found: dict[str, str | None] = {}
    for i, arg in enumerate(argv):
        for name in names:
            flag = "--" + name
            if arg == flag:
                nxt = argv[i + 1] if i + 1 < len(argv) else None
                found[name] = nxt if nxt is not None and not nxt.startswith("--") else None
            elif arg.startswith(flag + "="):
                found[name] = arg[len(flag) + 1:]
    return found


def pre_scan_all(argv: list[str], name: str) -> list[str]:
    """Every value of a repeatable ``--name VALUE`` / ``--name=VALUE`` in ``argv``."""
    flag, found = "--" + name, []
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            found.append(argv[i + 1])
        elif arg.startswith(flag + "="):
            found.append(arg[len(flag) + 1:])
    return found
