"""Recipes: TOML files parsed into frozen dataclasses, with dotted ``key=value`` overrides.

Every problem in a recipe (unknown key, wrong type, value out of range, impossible combination) is
collected and reported at once in a :class:`RecipeError`, each line naming the file, the key, what
was expected and what was found.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SEED_LIMIT = 2**32 - 1  # seeds are mixed into generator seeds (seed * 1_000_003 + epoch) that must stay below 2**64
INT_LIMIT = 2**31 - 1  # any other integer key: far above every sensible value, far below what overflows


class RecipeError(Exception):
    """A recipe or override is invalid; ``problems`` lists every problem found."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


def _opt(
    default: Any,
    *,
    choices: Sequence[Any] | None = None,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
    doc: str = "",
    also: tuple[Any, str] | None = None,
) -> Any:
    """A recipe field; ``also`` = (predicate, description) admits values outside ``choices`` that match."""
    meta = {"choices": choices, "lo": lo, "hi": hi, "lo_open": lo_open, "hi_open": hi_open, "doc": doc, "also": also}
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class RunConfig:
    seed: int = _opt(0, lo=0, hi=SEED_LIMIT)
    out: str = _opt("", doc="run folder; empty: runs/<recipe-stem>-<UTC time>")


@dataclass(frozen=True)
class DataConfig:
    name: str = _opt(
        "digits",
        choices=("digits", "cifar10", "cifar100", "svhn", "shapes", "imagefolder"),
        doc="imagefolder: data.root holds train/ and val/, one subfolder of images per class; val/ is the test split",
    )
    root: str = _opt("data")
    download: bool = _opt(False)
    batch_size: int = _opt(128, lo=1)
    val_size: int = _opt(5000, lo=0)
    test_size: int = _opt(360, lo=1, doc="held-out test images, for data sets without a test split (digits, shapes)")
    split_seed: int = _opt(
        0, lo=0, hi=SEED_LIMIT, doc="seed of the validation/test split, shared by every run on the data"
    )
    augment: str = _opt(
        "auto",
        choices=("auto", "none", "crop", "crop_flip", "rrc_flip"),
        doc="crop, crop_flip: shifts within 4 px of zero padding (+ flips), for the small data sets held whole; "
        "rrc_flip: random resized crop + flip, imagefolder only; auto: crop_flip on CIFAR, rrc_flip on imagefolder, "
        "none otherwise",
    )
    train_size: int = _opt(0, lo=0, doc="0: every training image; otherwise the first N (shuffled) images")
    shapes_classes: int = _opt(10, lo=2, doc='"shapes" (synthetic) only: number of classes')
    shapes_images: int = _opt(20000, lo=1, doc='"shapes" only: images generated for the training + validation splits')
    shapes_seed: int = _opt(
        0, lo=0, hi=SEED_LIMIT, doc='"shapes" only: seed of the generated images, shared by every run on them'
    )
    image_size: int = _opt(
        0,
        lo=0,
        doc='side of the square images the model sees, "imagefolder" only (its files vary in size; the other data '
        "sets have their own); 0: the data set's own size, 224 for imagefolder",
    )
    workers: int = _opt(
        -1,
        lo=-1,
        doc='"imagefolder" only: processes decoding images per rank; 0: the training process itself; '
        "-1: one per CPU this rank may use, less one for training, at most 8",
    )


@dataclass(frozen=True)
class ModelConfig:
    arch: str = _opt(
        "vgg19",
        choices=("vgg", "vgg11", "vgg13", "vgg16", "vgg19", "resnet20", "resnet56", "resnet110"),
        also=(lambda v: ":" in v, '"torchvision:NAME" or "package.module:callable"'),
        doc="a width-list net, or any CNN by name (torchvision:resnet18) or import path (my_package.models:build)",
    )
    kwargs: dict = _opt({}, doc="keyword arguments of a model by name or import path (num_classes comes from the data)")
    cfg: list = _opt([], doc='VGG width list for arch = "vgg": ints are 3x3 convs, "M" a 2x2 max-pool')
    num_classes: int = _opt(0, lo=0, doc="0: from the data set")
    round_to: int = _opt(8, lo=1)
    width_multiplier: float = _opt(1.0, lo=0.0, hi=16.0, lo_open=True)
    widths: dict = _opt(
        {},
        doc="starting widths, channel group → width (e.g. {conv1 = 8, conv2 = 20}); a group not named starts at its "
        "seed width (cgap.seed_fraction of full, so full width in a run without growth); {}: every group does",
    )


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = _opt(160, lo=1)
    device: str = _opt("auto", doc='"auto" (CUDA when present), "cpu", "cuda", "cuda:1", ...')
    nan_policy: str = _opt("stop", choices=("stop", "skip"))
    skip_limit: int = _opt(
        10, lo=1, doc='nan_policy "skip": the run stops (as "stop" does) after this many skipped steps in a row'
    )
    skip_fraction: float = _opt(
        0.05, lo=0.0, hi=1.0, doc='nan_policy "skip": ... or once more than this fraction of all steps were skipped'
    )
    log_every: int = _opt(20, lo=1, doc="steps between metric lines")
    label_smoothing: float = _opt(0.0, lo=0.0, hi=1.0, hi_open=True)
    precision: str = _opt("fp32", choices=("fp32", "bf16"), doc="bf16: autocast forward; weights stay fp32")
    channels_last: bool = _opt(False, doc="NHWC activations and weights (faster convolutions on tensor cores)")
    cuda_graphs: str = _opt(
        "auto",
        choices=("auto", "true", "false"),
        doc="the whole training step as one CUDA graph, re-captured after every structural change; auto: on a "
        'single CUDA device with nan_policy "stop" and the saliency updated every step',
    )


@dataclass(frozen=True)
class OptimConfig:
    name: str = _opt("sgd", choices=("sgd", "adam", "adamw"))
    lr: float = _opt(0.1, lo=0.0, lo_open=True)
    momentum: float = _opt(0.9, lo=0.0, hi=1.0, hi_open=True)
    weight_decay: float = _opt(5e-4, lo=0.0)
    schedule: str = _opt("step", choices=("step", "cosine", "constant"))
    milestones: list = _opt([0.5, 0.75], doc="fractions of training where the step schedule divides lr by 10")
    warmup_epochs: float = _opt(0.0, lo=0.0)


@dataclass(frozen=True)
class ImportanceConfig:
    criterion: str = _opt(
        "taylor",
        choices=("taylor", "taylor_signed", "l1", "l2", "consumer_taylor", "bn_taylor"),
        doc="taylor: Σ|w·∂L/∂w| over the filter; consumer_taylor: (Σ V·∂L/∂V over the unit's consumer columns)², "
        "the first-order loss change of removing the unit; bn_taylor: (γ·∂L/∂γ + β·∂L/∂β)²",
    )
    momentum: float = _opt(0.9, lo=0.0, hi=1.0, hi_open=True)
    every: int = _opt(1, lo=1, doc="steps between saliency updates")
    newborn: str = _opt(
        "share",
        choices=("share", "mean"),
        doc="a new unit's saliency: share (half of its parent's, the parent keeps half) or mean (its group's mean)",
    )


@dataclass(frozen=True)
class GrowConfig:
    enabled: bool = _opt(True)
    every: float = _opt(2.0, lo=0.0, lo_open=True, doc="epochs between growth steps (fractions allowed)")
    rate: float = _opt(0.25, lo=0.0, lo_open=True)
    cap_fraction: float = _opt(1.0, lo=0.0, lo_open=True)
    selection: str = _opt("importance", choices=("importance", "random"))
    init: str = _opt(
        "copy_zero_out",
        choices=("copy_zero_out", "split", "random_zero_out", "orthogonal_zero_out"),
        doc="orthogonal_zero_out: incoming filters orthogonal to the existing ones (and to each other), zero out",
    )
    noise: float = _opt(0.01, lo=0.0)
    patience: int = _opt(3, lo=1)
    min_gain: float = _opt(0.1, lo=0.0, doc="validation accuracy points a growth window must gain")
    until: float = _opt(0.4, lo=0.0, hi=1.0, doc="fraction of training after which growth stops")
    reach: float = _opt(
        0.0,
        lo=0.0,
        hi=1.0,
        doc="0: grow by rate; otherwise every group grows geometrically from its seed to its cap, reaching it at "
        "this fraction of training (rate is then unused)",
    )


@dataclass(frozen=True)
class PruneConfig:
    enabled: bool = _opt(True)
    every: float = _opt(1.0, lo=0.0, lo_open=True, doc="epochs between pruning steps (fractions allowed)")
    steps: int = _opt(10, lo=1)
    step_fraction: float = _opt(0.10, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    min_fraction: float = _opt(0.05, lo=0.0, hi=1.0, lo_open=True)
    target_reduction: float = _opt(0.789, lo=0.0, hi=1.0, hi_open=True)
    max_accuracy_drop: float = _opt(1.0, lo=0.0, doc="validation accuracy points")
    rank: str = _opt(
        "normalized",
        choices=("normalized", "per_param"),
        doc="normalized: lowest S / mean(S of the group) first, budget in units; per_param: lowest S per parameter "
        "the unit frees first (S compared across groups as it is), budget in parameters",
    )


@dataclass(frozen=True)
class CGaPConfig:
    seed_fraction: float = _opt(0.25, lo=0.0, hi=1.0, lo_open=True)
    stabilize: float = _opt(0.1, lo=0.0, hi=1.0, doc="fraction of training with no change between growth and pruning")
    importance: ImportanceConfig = field(default_factory=ImportanceConfig)
    grow: GrowConfig = field(default_factory=GrowConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)


@dataclass(frozen=True)
class CompileConfig:
    enabled: bool = _opt(True)
    backend: str = _opt("inductor")
    mode: str = _opt("default", choices=("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"))
    policy: str = _opt("always", choices=("always", "never", "auto"))


@dataclass(frozen=True)
class DashboardConfig:
    enabled: bool = _opt(True, doc="rich live dashboard when stdout is a terminal")
    refresh_per_second: float = _opt(4.0, lo=0.1, hi=30.0)


@dataclass(frozen=True)
class CheckpointConfig:
    every: int = _opt(1, lo=0, doc="epochs between checkpoints; 0: only at phase boundaries and the end")


@dataclass(frozen=True)
class Recipe:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    cgap: CGaPConfig = field(default_factory=CGaPConfig)
    compile: CompileConfig = field(default_factory=CompileConfig)
    dashboard: DashboardConfig = field(default_factory=DashboardConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **dotted: Any) -> Recipe:
        """A copy with dotted keys set (``recipe.replace(**{"optim.lr": 0.05})``), validated."""
        return build_recipe(_merge(self.to_dict(), dotted, "replace", []), "replace")


# ----------------------------------------------------------------------------------------------- loading


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """Read a TOML recipe, apply ``key=value`` overrides, validate; raise RecipeError listing all problems."""
    path = Path(path)
    if path.is_dir():
        raise RecipeError([f"{path}: a folder, expected a recipe file (.toml)"])
    if not path.is_file():
        raise RecipeError([f"{path}: no such recipe file"])
    try:
        raw = tomllib.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise RecipeError(
            [f"{path}: expected a TOML recipe in UTF-8 text, got bytes that are not ({err.reason})"]
        ) from None
    except OSError as err:
        raise RecipeError([f"{path}: cannot be read ({err.strerror})"]) from None
    except tomllib.TOMLDecodeError as err:
        raise RecipeError([f"{path}: not valid TOML: {err}"]) from None
    problems: list[str] = []
    parsed = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            problems.append(f"override {item!r}: expected key=value, e.g. optim.lr=0.05")
            continue
        if "\n" in item or "\r" in item:
            problems.append(f"override {item!r}: expected one key=value on one line, got a line break in it")
            continue
        parsed[key] = _parse_value(text.strip())
    merged = _merge(raw, parsed, "override", problems)
    return build_recipe(merged, str(path), problems)


def _parse_value(text: str) -> Any:
    """A TOML literal (``0.05``, ``true``, ``"sgd"``, ``[1, 2]``); a bare word is taken as a string."""
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def _merge(raw: dict[str, Any], dotted: Mapping[str, Any], origin: str, problems: list[str]) -> dict[str, Any]:
    merged = _deep_copy(raw)
    for key, value in dotted.items():
        node = merged
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                problems.append(f"{origin} {key}: {part!r} is a value, not a table")
                break
            node = child
        else:
            node[parts[-1]] = value
    return merged


def _deep_copy(d: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in d.items()}


def build_recipe(raw: Mapping[str, Any], source: str = "recipe", problems: list[str] | None = None) -> Recipe:
    problems = [] if problems is None else problems
    recipe = _build(Recipe, raw, source, "", problems)
    if not problems:
        _check_combinations(recipe, source, problems)
    if problems:
        raise RecipeError(problems)
    return recipe


def _build(cls: type, raw: Mapping[str, Any], source: str, prefix: str, problems: list[str]) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            near = difflib.get_close_matches(key, list(fields), n=1)
            hint = f"; did you mean '{prefix}{near[0]}'?" if near else f"; known keys here: {', '.join(fields)}"
            problems.append(f"{source}: unknown key '{prefix}{key}'{hint}")
    values = {}
    for name, f in fields.items():
        if name not in raw:
            continue
        key, value, expected = f"{prefix}{name}", raw[name], hints[name]
        if dataclasses.is_dataclass(expected):
            if not isinstance(value, Mapping):
                problems.append(f"{source}: {key}: expected a table [{key}], got {value!r}")
                continue
            values[name] = _build(expected, value, source, key + ".", problems)
            continue
        checked = _check_value(key, value, expected, f.metadata, source, problems)
        if checked is not _INVALID:
            values[name] = checked
    try:
        return cls(**values)
    except TypeError:  # only reached with problems already recorded
        return cls()


_INVALID = object()


def _check_value(key: str, value: Any, expected: Any, meta: Mapping[str, Any], source: str, problems: list[str]) -> Any:
    def bad(what: str) -> Any:
        problems.append(f"{source}: {key}: expected {what}, got {value!r}")
        return _INVALID

    if isinstance(expected, types.UnionType):
        expected = next(t for t in typing.get_args(expected) if t is not type(None))
    if expected is str and isinstance(value, bool) and str(value).lower() in (meta.get("choices") or ()):
        value = str(value).lower()  # cuda_graphs = true: the TOML boolean for the choice "true"
    if expected is bool:
        if not isinstance(value, bool):
            return bad("true or false")
    elif expected is int:
        if isinstance(value, bool) or not isinstance(value, int):
            return bad("an integer")
    elif expected is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return bad("a number")
        if not math.isfinite(value):
            return bad("a finite number")
    elif expected is str:
        if not isinstance(value, str):
            return bad('a string (in quotes: "...")')
    elif expected is list:
        if not isinstance(value, list):
            return bad("a list [...]")
    elif expected is dict and key.endswith("kwargs"):
        if not isinstance(value, Mapping):
            return bad("a table of keyword arguments, such as {dropout = 0.2}")
        return dict(value)
    elif expected is dict:
        if not isinstance(value, Mapping):
            return bad("a table of channel group → width, such as {conv1 = 8, conv2 = 20}")
        wrong = [
            f"{name} = {width!r}"
            for name, width in value.items()
            if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= INT_LIMIT
        ]
        if wrong:
            problems.append(f"{source}: {key}: expected widths that are integers >= 1, got {', '.join(wrong)}")
            return _INVALID
        return dict(value)
    choices, also = meta.get("choices"), meta.get("also")
    if choices and value not in choices and not (also and isinstance(value, str) and also[0](value)):
        near = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        return bad(f"one of {', '.join(repr(c) for c in choices)}{f', or {also[1]}' if also else ''}{hint}")
    lo, hi = meta.get("lo"), meta.get("hi")
    if expected is int and hi is None:
        hi = INT_LIMIT
    if lo is not None and (value <= lo if meta.get("lo_open") else value < lo):
        return bad(f"a value {'>' if meta.get('lo_open') else '>='} {lo}")
    if hi is not None and (value >= hi if meta.get("hi_open") else value > hi):
        return bad(f"a value {'<' if meta.get('hi_open') else '<='} {hi}")
    return float(value) if expected is float else value


def _check_combinations(recipe: Recipe, source: str, problems: list[str]) -> None:
    cgap, model = recipe.cgap, recipe.model
    if cgap.grow.enabled and cgap.grow.cap_fraction < cgap.seed_fraction:
        problems.append(
            f"{source}: cgap.grow.cap_fraction: expected >= cgap.seed_fraction ({cgap.seed_fraction}) so that the "
            f"seed fits under the growth cap, got {cgap.grow.cap_fraction}"
        )
    if model.arch == "vgg":
        if not model.cfg:
            problems.append(f'{source}: model.cfg: expected a width list such as [16, "M", 32] for arch "vgg", got []')
        for item in model.cfg:
            if not (item == "M" or (isinstance(item, int) and not isinstance(item, bool) and item > 0)):
                problems.append(f'{source}: model.cfg: expected positive ints and "M", got {item!r}')
                break
        if model.cfg and not any(item != "M" for item in model.cfg):
            problems.append(f"{source}: model.cfg: expected at least one convolution (an int), got {model.cfg}")
    elif model.cfg:
        problems.append(
            f'{source}: model.cfg: only used with model.arch = "vgg" (arch is {model.arch!r}), got {model.cfg}'
        )
    if ":" in model.arch:
        from .models.graph import GraphError, resolve_factory

        try:
            resolve_factory(model.arch)
        except GraphError as err:
            problems.append(f"{source}: model.arch: {model.arch}: {err}")
        if model.width_multiplier != 1:
            problems.append(
                f"{source}: model.width_multiplier: only for the width-list nets ({model.arch} is built as named), "
                f"expected 1.0, got {model.width_multiplier}"
            )
        if cgap.grow.enabled and cgap.grow.cap_fraction > 1:
            problems.append(
                f"{source}: cgap.grow.cap_fraction: {model.arch} is grown up to the widths it is built with, so "
                f"expected at most 1.0, got {cgap.grow.cap_fraction}"
            )
    elif model.kwargs:
        problems.append(
            f"{source}: model.kwargs: only for a model by name or import path (arch is {model.arch!r}), "
            f"got {model.kwargs}"
        )
    if recipe.optim.schedule == "step":
        ms = recipe.optim.milestones
        if not all(isinstance(m, (int, float)) and not isinstance(m, bool) and 0 < m < 1 for m in ms):
            problems.append(f"{source}: optim.milestones: expected fractions of training in (0, 1), got {ms}")
    if cgap.grow.reach > cgap.grow.until:
        problems.append(
            f"{source}: cgap.grow.reach: expected <= cgap.grow.until ({cgap.grow.until}), since growth stops there, "
            f"got {cgap.grow.reach}"
        )
    if cgap.grow.enabled and cgap.grow.until == 0:
        problems.append(f"{source}: cgap.grow.until: expected > 0 when growth is enabled, got 0")
    if cgap.grow.until + cgap.stabilize > 1:
        problems.append(
            f"{source}: cgap.stabilize: grow.until + stabilize must leave room to prune (<= 1), "
            f"got {cgap.grow.until} + {cgap.stabilize}"
        )
    epochs = recipe.train.epochs
    for key, enabled, every in (
        ("cgap.grow.every", cgap.grow.enabled, cgap.grow.every),
        ("cgap.prune.every", cgap.prune.enabled, cgap.prune.every),
    ):
        if enabled and every > epochs:
            problems.append(
                f"{source}: {key}: expected at most train.epochs ({epochs}) so that the run takes a step, got {every}"
            )
    if recipe.optim.warmup_epochs > epochs:
        problems.append(
            f"{source}: optim.warmup_epochs: expected at most train.epochs ({epochs}), got {recipe.optim.warmup_epochs}"
        )
    _check_data(recipe.data, source, problems)
    if recipe.data.val_size == 0 and (cgap.grow.enabled or cgap.prune.enabled):
        problems.append(
            f"{source}: data.val_size: growth and pruning decide on validation accuracy, so expected at least 1 "
            "validation image (e.g. 5000 for CIFAR), got 0"
        )
    if not cgap.grow.enabled and cgap.seed_fraction < 1 and recipe.cgap.prune.enabled:
        problems.append(
            f"{source}: cgap.seed_fraction: a run without growth starts at full width (1.0), got {cgap.seed_fraction}"
        )


def _check_data(data: DataConfig, source: str, problems: list[str]) -> None:
    """Keys that belong to one kind of data: the held-whole sets (crop augmentation) or imagefolder (crop size)."""
    if data.name == "imagefolder":
        if data.augment in ("crop", "crop_flip"):
            problems.append(
                f'{source}: data.augment: "crop" and "crop_flip" shift small images within a zero padding; '
                f'imagefolder expected "rrc_flip" (random resized crop + flip), "none" or "auto", got {data.augment!r}'
            )
        return
    if data.image_size:
        problems.append(
            f'{source}: data.image_size: only used with data.name = "imagefolder" (the other data sets have their '
            f"own size; name is {data.name!r}), expected 0, got {data.image_size}"
        )
    if data.augment == "rrc_flip":
        problems.append(
            f'{source}: data.augment: "rrc_flip" (random resized crop) is for data.name = "imagefolder"; '
            f'{data.name} expected "crop", "crop_flip", "none" or "auto", got "rrc_flip"'
        )


# ------------------------------------------------------------------------------------------------ saving


def to_toml(recipe: Recipe) -> str:
    """The resolved recipe as TOML that :func:`load_recipe` reads back to an equal recipe."""
    lines: list[str] = []

    def emit(obj: Any, prefix: str) -> None:
        scalars = [(f.name, getattr(obj, f.name)) for f in dataclasses.fields(obj)]
        tables = [(n, v) for n, v in scalars if dataclasses.is_dataclass(v)]
        plain = [(n, v) for n, v in scalars if not dataclasses.is_dataclass(v)]
        if prefix and plain:
            lines.append(f"\n[{prefix}]")
        for name, value in plain:
            lines.append(f"{name} = {_toml_value(value)}")
        for name, value in tables:
            emit(value, f"{prefix}.{name}" if prefix else name)

    emit(recipe, "")
    return "\n".join(lines).lstrip("\n") + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, float):
        return "inf" if value == math.inf else repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):  # an inline table; a key that is not a bare TOML key is quoted
        items = (f"{k if _BARE_KEY.fullmatch(k) else _toml_value(k)} = {_toml_value(v)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    return repr(value)


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
