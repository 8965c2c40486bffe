"""Loading, merging and checking configs.

A config is the schema's defaults (`detector.config.defaults.Config`), then YAML files merged on
top (a file may name `_BASE_: other.yaml`, relative to itself, which is merged first), then
`KEY VALUE` pairs from the command line:

    cfg = load_config("configs/e2e_faster_rcnn_R_50_FPN_1x.yaml",
                      ["MODEL.RPN.NMS_THRESH", "0.6", "INPUT.MIN_SIZE_TRAIN", "(640, 800)"])

OmegaConf does the merging and the type checks; this module turns its errors into messages that
name the key, where it came from (file or command line) and the fix, as `ConfigError`s. Tuples
written as in maskrcnn_benchmark's YAML files (`MIN_SIZE_TRAIN: (800,)`) are read as lists, and a
single value given for a list key becomes a one-element list. The loaded config is read-only;
`merge_opts` returns a changed copy and `unlocked` opens one for writing.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import typing
from collections.abc import Generator, Iterator, Sequence
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Any, TypeGuard, cast

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf, read_write
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from detector.config.compat import (
    CURRENT_VERSION,
    MASKRCNN_BENCHMARK_DEFAULTS,
    MASKRCNN_BENCHMARK_VERSION,
    CompatError,
    translate,
)
from detector.config.defaults import Config
from detector.utils.guards import is_dict, is_list, is_tuple

__all__ = [
    "ConfigError",
    "as_config",
    "as_node",
    "dump_config",
    "get_cfg",
    "load_config",
    "merge_opts",
    "save_config",
    "unlocked",
    "validate",
]

BASE_KEY = "_BASE_"
COMMAND_LINE = "command line"


class ConfigError(ValueError):
    """A config that cannot be loaded: unknown key, wrong type, bad file, bad value."""


# --------------------------------------------------------------------------------------------
# The schema's keys and their types, for error messages
# --------------------------------------------------------------------------------------------
def _is_enum(tp: Any) -> TypeGuard[type[Enum]]:
    return isinstance(tp, type) and issubclass(tp, Enum)


def _describe_type(tp: Any) -> str:
    """A readable name for a field's annotation: 'int', 'list of float', 'one of A, B'."""
    if _is_enum(tp):
        return "one of " + ", ".join(member.value for member in tp)
    origin = typing.get_origin(tp)
    if origin in (list, tuple, Sequence):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        if not args or args[0] is Any:
            return "list"
        return f"list of {_describe_type(args[0])}"
    if tp is Any:
        return "any value"
    return getattr(tp, "__name__", str(tp))


def _schema_fields(cls: type, prefix: str = "") -> dict[str, Any]:
    """Maps every full key ('MODEL.RPN.NMS_THRESH', and groups such as 'MODEL.RPN') to its
    annotation (a dataclass for groups)."""
    fields: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        tp = hints[f.name]
        fields[key] = tp
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):  # a group's dataclass
            fields.update(_schema_fields(tp, key + "."))
    return fields


_FIELDS: dict[str, Any] = _schema_fields(Config)


def _is_group(key: str) -> bool:
    return dataclasses.is_dataclass(_FIELDS.get(key))


def _is_list(key: str) -> bool:
    return typing.get_origin(_FIELDS.get(key)) in (list, tuple, Sequence)


def _closest_key(key: str) -> str | None:
    """The valid key most similar to `key`, judged on the full key and on its last part (so a
    key moved to another group, or a typo in a group name, still finds its match)."""
    leaf = key.rpartition(".")[2]

    def score(candidate: str) -> float:
        whole = difflib.SequenceMatcher(None, key, candidate).ratio()
        last = difflib.SequenceMatcher(None, leaf, candidate.rpartition(".")[2]).ratio()
        return 0.5 * whole + 0.5 * last

    best = max(_FIELDS, key=score)
    return best if score(best) >= 0.6 else None


def _strip_index(full_key: str) -> str:
    """'MODEL.RPN.ANCHOR_SIZES[1]' -> 'MODEL.RPN.ANCHOR_SIZES'."""
    return full_key.split("[", 1)[0]


def _lookup(data: dict[str, Any], full_key: str) -> Any:
    """The value at a dotted key (with an optional [i]) in nested dicts, or None."""
    value: Any = data
    for part in _strip_index(full_key).split("."):
        if not is_dict(value) or part not in value:
            return None
        value = value[part]
    if "[" in full_key and is_list(value):
        try:
            value = value[int(full_key.split("[", 1)[1].rstrip("]"))]
        except (ValueError, IndexError):
            pass
    return value


# --------------------------------------------------------------------------------------------
# Values: tuples as in maskrcnn_benchmark's YAML files, command-line literals
# --------------------------------------------------------------------------------------------
def _parse_tuple(text: str) -> Any:
    """'(640, 800)' -> [640, 800]; '(800,)' -> [800]; '()' -> []; other text unchanged."""
    stripped = text.strip()
    if not (stripped.startswith("(") and stripped.endswith(")")):
        return text
    try:
        return yaml.safe_load("[" + stripped[1:-1] + "]")
    except yaml.YAMLError:
        return text


def _parse_cli_value(text: str) -> Any:
    """A command-line value read as a YAML literal: '0.6' -> 0.6, 'true' -> True,
    '[1, 2]' and '(1, 2)' -> [1, 2]; text that is not valid YAML stays a string. An empty
    value (`MODEL.WEIGHT ''`) is the empty string (YAML would read null), an empty list for a
    list key."""
    if not text.strip():
        return ""
    parsed = _parse_tuple(text)
    if parsed is not text:
        return parsed
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _to_float(value: Any) -> Any:
    """'1e-3' -> 0.001: YAML 1.1 reads exponents without a dot as strings."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def _normalize(data: dict[str, Any], source: str, prefix: str = "") -> dict[str, Any]:
    """Reads tuple strings and single values given for list keys as lists, and an empty (null)
    value as "" (text keys) or [] (list keys), recursively.

    Unknown keys are passed through unchanged: merging reports them."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        full_key = prefix + str(key)
        if _is_group(full_key):
            if not is_dict(value):
                raise ConfigError(
                    f"{source}: {full_key} is a group of keys ({', '.join(_group_keys(full_key))})"
                    f", not a value: set one of its keys, e.g. {full_key}."
                    f"{_group_keys(full_key)[0]}"
                )
            value = _normalize(value, source, full_key + ".")
        elif _is_list(full_key):
            if value is None or (isinstance(value, str) and not value.strip()):
                value = []  # left empty: no items
            elif isinstance(value, str):
                value = _parse_tuple(value)
            if is_tuple(value):
                value = list(value)
            elif not isinstance(value, (list, dict)) and value is not None:
                value = [value]
            if is_list(value) and typing.get_args(_FIELDS[full_key]) == (float,):
                value = [_to_float(v) for v in value]
        elif _FIELDS.get(full_key) is float:
            value = _to_float(value)
        elif _FIELDS.get(full_key) is str and value is None:
            value = ""  # `WEIGHT:` with nothing after it in a file: none, as the docs say
        out[key] = value
    return out


# --------------------------------------------------------------------------------------------
# Merging
# --------------------------------------------------------------------------------------------
def _merge(cfg: DictConfig, data: dict[str, Any], source: str) -> None:
    """Merges nested dicts `data` into `cfg`; errors name `source` (a file or the command line)."""
    try:
        data = _normalize(translate(copy.deepcopy(data), source), source)
    except CompatError as e:
        raise ConfigError(str(e)) from None
    try:
        cfg.merge_with(data)
    except ConfigKeyError as e:
        full_key = _user_key(data, _strip_index(e.full_key or str(e.key)))
        raise ConfigError(_unknown_key_message(full_key, source)) from None
    except ValidationError as e:
        raise ConfigError(_type_message(e, data, source)) from None
    except OmegaConfBaseException as e:
        where = f" at {e.full_key}" if e.full_key else ""
        first_line = str(e).splitlines()[0]
        raise ConfigError(f"{source}: invalid config{where}: {first_line}") from None


def _user_key(data: dict[str, Any], full_key: str) -> str:
    """The full key the user wrote under an unknown group: 'MODEL.RPNN' -> 'MODEL.RPNN.NMS_THRESH'
    (when that group holds a single key)."""
    value = _lookup(data, full_key)
    while is_dict(value) and len(value) == 1:
        ((name, value),) = value.items()
        full_key = f"{full_key}.{name}"
    return full_key


def _unknown_key_message(full_key: str, source: str) -> str:
    close = _closest_key(full_key)
    hint = f"; did you mean {close}?" if close else ""
    if not close:
        parent = full_key.rpartition(".")[0]
        while parent and not _is_group(parent):  # the deepest group that exists
            parent = parent.rpartition(".")[0]
        known = sorted(_group_keys(parent))
        hint = f"; valid keys under {parent or 'the top level'}: {', '.join(known)}"
    return f"{source}: unknown config key {full_key}{hint}"


def _type_message(e: ValidationError, data: dict[str, Any], source: str) -> str:
    full_key = e.full_key or ""
    key = _strip_index(full_key)
    if key not in _FIELDS:
        return f"{source}: invalid value at {full_key}: {str(e).splitlines()[0]}"
    expected = _describe_type(_FIELDS[key])
    if "[" in full_key and _is_list(key):
        item_type = (typing.get_args(_FIELDS[key]) or (Any,))[0]
        expected = f"{_describe_type(item_type)} (the items of {key})"
    if _is_group(key):
        expected = f"a group of keys ({', '.join(_group_keys(key))})"
    value = _lookup(data, full_key)
    got = "null" if value is None else f"{value!r} ({type(value).__name__})"
    return f"{source}: {full_key} = {got} has the wrong type: expected {expected}"


def _group_keys(group: str) -> list[str]:
    return [k.rpartition(".")[2] for k in _FIELDS if k.rpartition(".")[0] == group]


def _read_yaml(path: Path) -> dict[str, Any]:
    """Reads one YAML file with yaml.safe_load (no Python tags) into a dict."""
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.constructor.ConstructorError as e:
        line = f", line {e.problem_mark.line + 1}" if e.problem_mark else ""
        raise ConfigError(
            f"{path}{line}: {e.problem}. Config files are plain YAML, read with yaml.safe_load: "
            "Python tags such as !!python/object are refused; write plain values instead"
        ) from None
    except yaml.YAMLError as e:
        raise ConfigError(
            f"{path}: not valid YAML: {e}".replace("<unicode string>", str(path))
        ) from None
    if data is None:
        return {}
    if not is_dict(data):
        raise ConfigError(
            f"{path}: a config file must hold a mapping of keys (MODEL: ...), "
            f"not a {type(data).__name__}"
        )
    return data


def _file_chain(path: Path, stack: tuple[Path, ...] = ()) -> list[tuple[Path, dict[str, Any]]]:
    """The files to merge, bases first: [(path, data without _BASE_), ...]."""
    path = path.resolve()
    if path in stack:
        cycle = " -> ".join(str(p) for p in (*stack, path))
        raise ConfigError(f"{BASE_KEY} cycle: {cycle}")
    data = _read_yaml(path)
    bases = data.pop(BASE_KEY, None)
    if bases is None:
        bases = []
    elif isinstance(bases, str):
        bases = [bases]
    elif not (is_list(bases) and all(isinstance(b, str) for b in bases)):
        raise ConfigError(f"{path}: {BASE_KEY} must be a file name or a list of file names")
    chain: list[tuple[Path, dict[str, Any]]] = []
    for base in bases:
        base_path = Path(base).expanduser()
        if not base_path.is_absolute():
            base_path = path.parent / base_path
        if not base_path.is_file():
            raise ConfigError(f"{path}: {BASE_KEY} file not found: {base} (looked for {base_path})")
        chain.extend(_file_chain(base_path, (*stack, path)))
    chain.append((path, data))
    return chain


def _opts_to_dicts(opts: Sequence[str]) -> list[tuple[str, dict[str, Any]]]:
    """['A.B', '1', 'C', 'x'] -> [('A.B', {'A': {'B': 1}}), ('C', {'C': 'x'})]."""
    if len(opts) % 2:
        raise ConfigError(
            f"{COMMAND_LINE}: options must be KEY VALUE pairs, got an odd number ({len(opts)}): "
            f"{' '.join(map(str, opts))}"
        )
    pairs: list[tuple[str, dict[str, Any]]] = []
    for key, text in zip(opts[0::2], opts[1::2], strict=True):
        # Programmatic callers may pass values that are not text.
        value = _parse_cli_value(text) if isinstance(text, str) else text  # pyright: ignore[reportUnnecessaryIsInstance]
        nested: dict[str, Any] = {}
        node = nested
        parts = str(key).split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
        pairs.append((str(key), nested))
    return pairs


# --------------------------------------------------------------------------------------------
# Consistency checks that types alone cannot express
# --------------------------------------------------------------------------------------------
# Ranges of the numeric keys (list items included). Every number must be finite and >= 0, except
# those listed under ANY_SIGN or AT_LEAST_MINUS_ONE (-1 meaning "off" / "auto"); POSITIVE ones
# must be > 0 and UNIT ones lie in [0, 1].
_ANY_SIGN = {"INPUT.PIXEL_MEAN"}
_AT_LEAST_MINUS_ONE = {"SEED", "MODEL.RPN.STRADDLE_THRESH", "MODEL.GROUP_NORM.DIM_PER_GP"}
_POSITIVE = {
    "MODEL.RESNETS.NUM_GROUPS", "MODEL.RESNETS.WIDTH_PER_GROUP", "MODEL.RESNETS.RES5_DILATION",
    "MODEL.RESNETS.STEM_OUT_CHANNELS", "MODEL.RESNETS.RES2_OUT_CHANNELS",
    "MODEL.RESNETS.BACKBONE_OUT_CHANNELS", "MODEL.RESNETS.DEFORMABLE_GROUPS",
    "MODEL.GROUP_NORM.NUM_GROUPS", "MODEL.GROUP_NORM.EPSILON", "MODEL.RPN.ANCHOR_SIZES",
    "MODEL.RPN.ANCHOR_STRIDE", "MODEL.RPN.ASPECT_RATIOS", "MODEL.RPN.BATCH_SIZE_PER_IMAGE",
    "MODEL.RPN.PRE_NMS_TOP_N_TRAIN", "MODEL.RPN.PRE_NMS_TOP_N_TEST",
    "MODEL.RPN.POST_NMS_TOP_N_TRAIN", "MODEL.RPN.POST_NMS_TOP_N_TEST",
    "MODEL.RPN.FPN_POST_NMS_TOP_N_TRAIN", "MODEL.RPN.FPN_POST_NMS_TOP_N_TEST",
    "MODEL.ROI_HEADS.BBOX_REG_WEIGHTS", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE",
    "MODEL.ROI_HEADS.DETECTIONS_PER_IMG", "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION",
    "MODEL.ROI_BOX_HEAD.POOLER_SCALES", "MODEL.ROI_BOX_HEAD.MLP_HEAD_DIM",
    "MODEL.ROI_BOX_HEAD.DILATION", "MODEL.ROI_BOX_HEAD.CONV_HEAD_DIM",
    "MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION", "MODEL.ROI_MASK_HEAD.POOLER_SCALES",
    "MODEL.ROI_MASK_HEAD.MLP_HEAD_DIM", "MODEL.ROI_MASK_HEAD.CONV_LAYERS",
    "MODEL.ROI_MASK_HEAD.RESOLUTION", "MODEL.ROI_MASK_HEAD.DILATION", "INPUT.MIN_SIZE_TRAIN",
    "INPUT.MAX_SIZE_TRAIN", "INPUT.MIN_SIZE_TEST", "INPUT.MAX_SIZE_TEST", "INPUT.PIXEL_STD",
    "INPUT.MAX_IMAGE_PIXELS", "SOLVER.MAX_ITER", "SOLVER.BASE_LR", "SOLVER.IMS_PER_BATCH",
    "SOLVER.CLIP_GRADIENTS.MAX_NORM", "SOLVER.ACCUMULATE_GRAD_STEPS", "TEST.IMS_PER_BATCH",
    "MODEL.RPN.BBOX_XFORM_CLIP", "MODEL.ROI_HEADS.BBOX_XFORM_CLIP",
}  # fmt: skip
_UNIT = {
    "MODEL.RPN.FG_IOU_THRESHOLD", "MODEL.RPN.BG_IOU_THRESHOLD", "MODEL.RPN.POSITIVE_FRACTION",
    "MODEL.RPN.NMS_THRESH", "MODEL.ROI_HEADS.FG_IOU_THRESHOLD",
    "MODEL.ROI_HEADS.BG_IOU_THRESHOLD", "MODEL.ROI_HEADS.BG_IOU_THRESHOLD_LO",
    "MODEL.ROI_HEADS.POSITIVE_FRACTION", "MODEL.ROI_HEADS.SCORE_THRESH", "MODEL.ROI_HEADS.NMS",
    "MODEL.ROI_MASK_HEAD.POSTPROCESS_MASKS_THRESHOLD", "INPUT.HORIZONTAL_FLIP_PROB_TRAIN",
    "INPUT.VERTICAL_FLIP_PROB_TRAIN", "SOLVER.WARMUP_FACTOR", "SOLVER.MOMENTUM",
}  # fmt: skip


def _numbers(node: Any, prefix: str = "") -> Iterator[tuple[str, str, float]]:
    """(schema key, key as written with a list index, value) of every number in the config."""
    if isinstance(node, DictConfig) or is_dict(node):
        for name, child in node.items():
            yield from _numbers(child, f"{prefix}{name}.")
    elif isinstance(node, ListConfig) or is_list(node):
        for i, item in enumerate(node):
            if isinstance(item, (int, float)) and not isinstance(item, bool):
                yield prefix[:-1], f"{prefix[:-1]}[{i}]", item
    elif isinstance(node, (int, float)) and not isinstance(node, bool):
        yield prefix[:-1], prefix[:-1], node


def _range_requirement(key: str, value: float) -> str | None:
    """What `value` of `key` violates, or None."""
    if not math.isfinite(value):
        return "must be a finite number"
    if key in _POSITIVE and value <= 0:
        return "must be > 0"
    if key in _UNIT and not 0 <= value <= 1:
        return "must lie in [0, 1]"
    if key in _AT_LEAST_MINUS_ONE and value < -1:
        return "must be >= -1 (-1: off / automatic)"
    if key not in _ANY_SIGN | _AT_LEAST_MINUS_ONE and value < 0:
        return "must be >= 0"
    return None


def _check_ranges(cfg: Config) -> None:
    for key, written, value in _numbers(as_node(cfg)):
        requirement = _range_requirement(key, value)
        if requirement is not None:
            raise ConfigError(f"{written} = {value!r}: {requirement}")


def validate(cfg: Config) -> None:
    """Checks every number's range, then values against each other (lengths, orders); raises
    ConfigError naming the key."""
    _check_ranges(cfg)
    m, solver = cfg.MODEL, cfg.SOLVER
    rpn, heads = m.RPN, m.ROI_HEADS
    fpn = "FPN" in str(m.BACKBONE.CONV_BODY)  # USE_FPN keys only confirm this (typos: registry)
    checks = [
        ("MODEL.RESNETS.STAGE_WITH_DCN", len(m.RESNETS.STAGE_WITH_DCN) == 4,
         "needs 4 booleans, one per stage res2..res5"),
        ("MODEL.ROI_HEADS.BBOX_REG_WEIGHTS", len(heads.BBOX_REG_WEIGHTS) == 4,
         "needs 4 weights (wx, wy, ww, wh)"),
        ("MODEL.RPN.BG_IOU_THRESHOLD", rpn.BG_IOU_THRESHOLD <= rpn.FG_IOU_THRESHOLD,
         f"must not exceed MODEL.RPN.FG_IOU_THRESHOLD ({rpn.FG_IOU_THRESHOLD})"),
        ("MODEL.ROI_HEADS.BG_IOU_THRESHOLD",
         heads.BG_IOU_THRESHOLD_LO <= heads.BG_IOU_THRESHOLD <= heads.FG_IOU_THRESHOLD,
         f"must lie between BG_IOU_THRESHOLD_LO ({heads.BG_IOU_THRESHOLD_LO}) and "
         f"FG_IOU_THRESHOLD ({heads.FG_IOU_THRESHOLD})"),
        ("INPUT.MIN_SIZE_TRAIN", len(cfg.INPUT.MIN_SIZE_TRAIN) > 0, "needs at least one size"),
        ("INPUT.PIXEL_MEAN", len(cfg.INPUT.PIXEL_MEAN) == 3, "needs 3 values, one per channel"),
        ("INPUT.PIXEL_STD", len(cfg.INPUT.PIXEL_STD) == 3, "needs 3 values, one per channel"),
        ("SOLVER.STEPS", list(solver.STEPS) == sorted(solver.STEPS), "must be increasing"),
        ("INPUT.HUE", cfg.INPUT.HUE <= 0.5, "must lie in [0, 0.5] (0: off)"),
        ("MODEL.META_ARCHITECTURE", m.META_ARCHITECTURE == "GeneralizedRCNN",
         "the only architecture is GeneralizedRCNN (two-stage detectors)"),
        ("MODEL.RPN.USE_FPN", not rpn.USE_FPN or fpn,
         f"is True but MODEL.BACKBONE.CONV_BODY {m.BACKBONE.CONV_BODY!r} has no FPN (the FPN "
         "comes with the backbone: choose a *-FPN CONV_BODY)"),
        ("MODEL.ROI_HEADS.USE_FPN", not heads.USE_FPN or fpn,
         f"is True but MODEL.BACKBONE.CONV_BODY {m.BACKBONE.CONV_BODY!r} has no FPN (the FPN "
         "comes with the backbone: choose a *-FPN CONV_BODY)"),
        ("SOLVER.LOG_PERIOD", solver.LOG_PERIOD >= 1, "must be at least 1"),
    ]  # fmt: skip
    for key, ok, requirement in checks:
        if not ok:
            value = OmegaConf.select(as_node(cfg), key)
            if isinstance(value, ListConfig):
                value = list(value)
            raise ConfigError(f"{key} = {value!r}: {requirement}")


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------
def as_config(node: DictConfig) -> Config:
    """The typed view of a structured config node: at run time the DictConfig itself, which
    reads and checks like the `Config` dataclass it was built from (OmegaConf.structured)."""
    return cast(Config, node)


def as_node(cfg: Config) -> DictConfig:
    """The DictConfig behind a typed config (for OmegaConf's own functions)."""
    return cast(DictConfig, cfg)


def get_cfg() -> Config:
    """A fresh, writable config holding the defaults (type-checked on assignment)."""
    return as_config(OmegaConf.structured(Config))


def load_config(path: str | Path | None, opts: Sequence[str] | None = None) -> Config:
    """Defaults, then the YAML file at `path` (with its `_BASE_` files), then `opts`.

    Args:
        path: a YAML config file, or None for the defaults.
        opts: command-line overrides, `[KEY, VALUE, KEY, VALUE, ...]`; values are YAML
            literals and may be tuples: `["INPUT.MIN_SIZE_TRAIN", "(640, 800)"]`.

    Returns:
        The read-only config.

    Raises:
        ConfigError: a missing or malformed file, an unknown key, a value of the wrong type,
            an odd number of opts, or inconsistent values.
    """
    node = as_node(get_cfg())
    chain: list[tuple[Path, dict[str, Any]]] = []
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        chain = _file_chain(path)
    command_line = [
        (f"{COMMAND_LINE} ({key})", nested) for key, nested in _opts_to_dicts(opts or [])
    ]
    sources = [(str(source), data) for source, data in chain] + command_line
    unversioned = MASKRCNN_BENCHMARK_VERSION if chain else CURRENT_VERSION
    if _version(sources, unversioned) == MASKRCNN_BENCHMARK_VERSION:
        defaults = {"VERSION": MASKRCNN_BENCHMARK_VERSION, **MASKRCNN_BENCHMARK_DEFAULTS}
        _merge(node, defaults, "maskrcnn_benchmark's defaults (VERSION 1)")
    for source, data in sources:
        _merge(node, data, source)
    validate(as_config(node))
    OmegaConf.set_readonly(node, True)
    return as_config(node)


def _version(sources: list[tuple[str, dict[str, Any]]], unversioned: int) -> int:
    """The config's VERSION: the last one a file or option sets, else `unversioned` (a file
    chain that sets none is maskrcnn_benchmark's; options alone are ours)."""
    version = unversioned
    for source, data in sources:
        if "VERSION" in data:
            version = data["VERSION"]
            if version not in (MASKRCNN_BENCHMARK_VERSION, CURRENT_VERSION):
                raise ConfigError(
                    f"{source}: VERSION = {version!r}: expected {CURRENT_VERSION} (this "
                    f"project's defaults) or {MASKRCNN_BENCHMARK_VERSION} (maskrcnn_benchmark's)"
                )
    return version


def merge_opts(cfg: Config, opts: Sequence[str]) -> Config:
    """A read-only copy of `cfg` with command-line style `[KEY, VALUE, ...]` overrides."""
    new = copy.deepcopy(as_node(cfg))
    OmegaConf.set_readonly(new, False)
    for key, nested in _opts_to_dicts(opts):
        _merge(new, nested, f"{COMMAND_LINE} ({key})")
    validate(as_config(new))
    OmegaConf.set_readonly(new, True)
    return as_config(new)


@contextmanager
def unlocked(cfg: Config) -> Generator[Config]:
    """Temporarily makes a read-only config writable (types and keys are still checked)."""
    with read_write(as_node(cfg)):
        yield cfg


def dump_config(cfg: Config) -> str:
    """The config as YAML; `load_config` reads it back to an equal config."""
    return OmegaConf.to_yaml(as_node(cfg))


def save_config(cfg: Config, path: str | Path) -> None:
    """Writes `dump_config(cfg)` to `path`, creating its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_config(cfg))
