"""Config files: reading YAML, `--set key=value` overrides, and building the config dataclasses from raw values.

Numbers accept fractions such as `8/255`; unknown keys and bad values raise a one-line `UserError` naming the
option as written (`eval.eps[0]`), with a suggestion. The dataclasses check their own fields when built
(`advtrain.bounds.CheckedConfig`); this module only turns YAML values into the fields' types. Config files can
also be named by their bundled name (`digits_trades`): see `config_path`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin, get_type_hints

import yaml

from advtrain.bounds import FieldError, Parsed, check_value, file_fields
from advtrain.errors import UserError
from advtrain.methods import MethodConfig, method_class
from advtrain.registry import suggestion
from advtrain.yamltags import refused_tag

BUNDLED_CONFIGS = Path(__file__).parent / "configs"  # the recipes shipped with advtrain (`advtrain configs`)


def parse_number(value: Any, where: str) -> float:
    """A float from a number or a string such as '8/255' or '0.03'."""
    if isinstance(value, bool):
        raise UserError(f"{where}: expected a number, got {value!r}")
    number: float | None = None
    if isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:  # an int beyond float range, e.g. 10**400
            number = math.inf
    elif isinstance(value, str):
        text = value.strip()
        try:
            if "/" in text:
                num, den = text.split("/", 1)
                number = float(num) / float(den)
            else:
                number = float(text)
        except (ValueError, ZeroDivisionError, OverflowError):
            pass
    if number is None:
        raise UserError(f"{where}: expected a number such as 0.03 or 8/255, got {value!r}")
    # No option means anything at inf or nan: they would only surface later as a diverging loss or an empty
    # attack, after files were written.
    if not math.isfinite(number):
        raise UserError(f"{where}: expected a finite number such as 0.03 or 8/255, got {value!r}")
    return number


def _show(name: str) -> str:
    """`name` as typed, or its repr if it holds a line break or another unprintable character.

    Error messages are one line; a key such as 'a\\nb' from a YAML file must not break that.
    """
    return name if name.isprintable() else repr(name)


_MAX_DEPTH = 16  # of lists and mappings inside an option value


def _plain(value: Any, where: str, depth: int = 0) -> Any:
    """`value` if it is made of YAML/JSON scalars, lists and string-keyed mappings, else a UserError.

    Free-form options (`data.options`, `model.options`) end up as keyword arguments and in the JSON
    checkpoint sidecar, so dates, binary blobs, non-string keys and non-finite floats are refused up front.
    The depth limit also stops YAML anchors that make a value contain itself (`&a [*a]`).
    """
    if depth > _MAX_DEPTH:
        option = where.partition("[")[0]  # the option's own name, without the list indices that led here
        raise UserError(f"{option}: nested more than {_MAX_DEPTH} levels deep (or contains itself): simplify it")
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise UserError(f"{where}: expected a finite number, got {value!r}")
        return value
    if isinstance(value, list | tuple):
        return [_plain(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                raise UserError(f"{where}: option names must be strings, got {key!r}")
        return {k: _plain(v, f"{where}.{_show(k)}", depth + 1) for k, v in value.items()}
    raise UserError(f"{where}: expected a number, string, list or mapping, got {value!r}")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = get_origin(tp)
    if origin is Annotated:
        # Annotated[T, Parsed(f), Ge(1), ...]: parse with f and coerce to T; the bounds are checked when the
        # dataclass is built (bounds.CheckedConfig), as for a config built in Python.
        base, *extras = get_args(tp)
        for extra in extras:
            if isinstance(extra, Parsed):
                value = extra.parse(value, where)
        return _coerce(value, base, where)
    if origin in (typing.Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _coerce(value, option, where)
            except UserError as e:
                # A Literal of words speaks for strings only: for a number (`eval.batch_size: 0`), the numeric
                # option's error says what is wrong (its bound), not "choose one of auto".
                if get_origin(option) is not Literal or isinstance(value, str):
                    errors.append(str(e))
        raise UserError(errors[-1] if errors else f"{where}: bad value {value!r}")
    if origin is Literal or tp in (bool, int, str):
        check_value(value, tp, where)  # nothing to convert: YAML writes these as they are
        return value
    if origin is list:
        if not isinstance(value, list | tuple):
            raise UserError(f"{where}: expected a list, got {value!r}")
        (item,) = get_args(tp)
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected a mapping, got {value!r}")
        # Option mappings become keyword arguments of a loader or model builder, so their names are identifiers.
        for key in value:
            if not (isinstance(key, str) and key.isidentifier()):
                raise UserError(f"{where}: option names are identifiers (letters, digits, _), got {key!r}")
        return _plain(value, where)
    if tp is float:
        return parse_number(value, where)
    if tp is Any:
        return _plain(value, where)
    if dataclasses.is_dataclass(tp):
        return build_config(tp, value, where)
    raise TypeError(f"unsupported config type {tp!r} at {where}")


def build_config(cls: type, raw: Any, where: str = "", given: Mapping[str, Any] | None = None) -> Any:
    """`cls` from the raw mapping of its section at `where` ("" for the top level). `given`: values the loader
    sets itself, by field; a mapping for a dataclass field holds those of that section (`{"eval": {"norm": ...}}`).
    """
    given = given or {}
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{where or 'config'}: expected a mapping, got {raw!r}")
    if cls is MethodConfig:
        name = raw.get("name", "pgd_at")
        if not isinstance(name, str):
            raise UserError(f"{where}.name: expected a method name, got {name!r}")
        cls = method_class(name).config_class
    hints = get_type_hints(cls, include_extras=True)  # include_extras keeps the Annotated bounds
    fields = set(file_fields(cls))
    unknown = [k for k in raw if k not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), fields, n=1)
        hint = f"did you mean {(where + '.' if where else '') + close[0]!r}? " if close else ""
        raise UserError(
            f"unknown option {(where + '.' if where else '') + str(key)!r}: {hint}"
            f"valid options here are {', '.join(sorted(fields))}"
        )
    for f in dataclasses.fields(cls):
        # A nested method (AWP's and IGD's `base`) given in part starts from the wrapper's own default for it
        # when it names the same method: `method.base.steps=5` on igd keeps IGD's eval-mode attack.
        nested = raw.get(f.name)
        if hints[f.name] is MethodConfig and isinstance(nested, dict) and f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
            if nested.get("name", default.name) == default.name:
                raw = {**raw, f.name: {**dataclasses.asdict(default), **nested}}
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in raw.items() if k not in given}
    for k, value in given.items():
        nested = dataclasses.is_dataclass(hints[k]) and isinstance(value, Mapping)
        kwargs[k] = build_config(hints[k], raw.get(k), f"{where}.{k}" if where else k, value) if nested else value
    try:
        return cls(**kwargs)
    except FieldError as e:  # named from the class (TRADESConfig.beta): name it as written (method.beta)
        raise e.under(where) from None


def _get_path(raw: dict[str, Any], keys: list[str]) -> Any:
    """The value at `keys` in nested mappings, or None where the path does not exist."""
    node: Any = raw
    for key in keys:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def _set_path(raw: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = raw
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise UserError(f"--set {_show(dotted)}: {key!r} is not a section")
        node = child
    node[keys[-1]] = value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key.path=value` strings (values parsed as YAML) to a raw config mapping, in order.

    Setting `method.name` (or `method.base.name`) to another method drops the options of the method it replaces.
    """
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {item!r}: expected key=value, e.g. --set train.epochs=30")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        key = key.strip()
        parts = key.split(".")
        if parts[0] == "method" and parts[-1] == "name" and isinstance(value, str):
            # Switching a method (`method.name`, or the method AWP wraps, `method.base.name`) starts the new
            # one from its own defaults: the file's options belong to the method it named (e.g. `--set
            # method.name=standard` on a pgd_at config). Only a string can name a method, and comparing two
            # YAML values can recurse forever when an anchor makes one contain itself (`[&a [*a]]`).
            parent = _get_path(raw, parts[:-1])
            if isinstance(parent, dict) and parent.get("name", value) != value:
                _set_path(raw, ".".join(parts[:-1]), {})  # a new mapping: a YAML alias of the old one keeps it
        _set_path(raw, key, value)
    return raw


def read_yaml(path: Path) -> dict[str, Any]:
    if path.is_dir():
        found = sorted(p.name for pattern in ("*.yaml", "*.yml") for p in path.glob(pattern))[:3]
        fix = f"one of its YAML files ({', '.join(found)})" if found else "a YAML file, e.g. configs/digits.yaml"
        raise UserError(f"config file {path} is a folder: pass {fix}")
    if not path.is_file():
        raise UserError(f"config file {path} not found: pass an existing YAML file, e.g. configs/digits.yaml")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:  # e.g. --config pointing at a weights file
        raise UserError(f"config file {path} is not UTF-8 text: pass a YAML config, e.g. configs/digits.yaml") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        tag = refused_tag(e)
        if tag is not None:
            raise UserError(f"config file {path} {tag}: write plain values instead") from None
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"config file {path} is not valid YAML{at}: fix the syntax") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UserError(f"config file {path} must hold a mapping of sections (data, model, method, ...)")
    return raw




def bundled_configs() -> dict[str, Path]:
    """The configs shipped with advtrain, by name (the file name without .yaml), sorted."""
    return {path.stem: path for path in sorted(BUNDLED_CONFIGS.glob("*.yaml"))}


def config_path(name: Path | str) -> Path:
    """The YAML file `--config NAME` names: a path that exists as it is, else the bundled config NAME (written with
    or without .yaml). A missing path with a folder in it is returned for `read_yaml` to report; a bare name that
    is neither is a one-line UserError listing the closest bundled names."""
    path = Path(name)
    bundled = bundled_configs()
    stem = path.name.removesuffix(".yaml")
    if path.exists() or path.parent != Path("."):
        return path
    if stem in bundled:
        return bundled[stem]
    raise UserError(f"config {str(name)!r} not found, as a file or a bundled config: "
                    f"{suggestion(stem, list(bundled), 3)}`advtrain configs` lists the bundled ones")


def config_description(path: Path) -> str:
    """What `advtrain configs` shows for a config file: the headline of the comment it starts with, i.e. up to the
    first colon, semicolon or full stop outside parentheses that ends a clause ("" without a leading comment)."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            if lines or line.strip():
                break
            continue
        lines.append(line.lstrip("#").strip())
    text = " ".join(lines)
    depth = 0
    for i, char in enumerate(text):
        depth += {"(": 1, ")": -1}.get(char, 0)
        after = text[i + 1: i + 3]
        if char in ":;":
            ends = after[:1] in (" ", "")
        else:  # ". X" and ". `code" end a sentence, as does a stop at the end; "et al. 2020" does not
            ends = char == "." and (after == "" or (after[0] == " " and (after[1:].isupper() or after[1:] == "`")))
        if depth == 0 and ends:
            return text[:i]
    return text
