"""Channel groups of a model the project did not write, found by tracing its graph with ``torch.fx``.

A *channel space* is a run of channels that must change together. Tracing the model once (on the meta device,
with shapes propagated) gives every tensor's channel dim a *layout*: the spaces its channels come from, in
order, each repeated ``r`` times per channel (a flatten of ``C×H×W`` gives ``H·W`` columns per channel). Ops tie
spaces together:

- a convolution or Linear starts a new space at its output (its filters, bias) and *consumes* its input's
  layout (its weight's input columns); a depthwise convolution's output is its input's space (in and out
  channels move together);
- BatchNorm, activations, pooling, dropout keep the layout (BatchNorm's parameters and running statistics
  join the space);
- an elementwise sum or product (a residual addition, a squeeze-excitation gate) unites the spaces of its
  operands, channel by channel; a concatenation along channels lays its inputs' layouts side by side;
- a flatten after the convolutions repeats each channel by the spatial size.

A space that reaches the model's input or output, a grouped convolution, or any op this module does not know
is *fixed*: it keeps its width, and the run says which and why. Every other space with a filter of its own
(a convolution or Linear producing it) becomes a :class:`ChannelGroup`: its tensors whose whole dim is the
space alone are plain producers/consumers (one index map gathers them); a tensor dim that holds several spaces
or repeats them (a concatenation's consumer, a flatten's Linear, BatchNorm after a concatenation) is a
:class:`Span`, whose columns surgery maps segment by segment.

``torch.fx`` rather than Torch-Pruning's ``DependencyGraph``: growth needs to know where a new unit's columns
go in every tensor (a child of a concatenated input lands inside the consumer's columns, a flattened one
lands as ``H·W`` columns), which the layout gives at any widths, while Torch-Pruning answers which indices to
remove at the current shapes; and fx ships with torch, so a GPU machine without Torch-Pruning runs it too.
The groups are checked against Torch-Pruning's where it is installed (``tests/test_graph_models.py``).
"""

from __future__ import annotations

import contextlib
import io
import operator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from .widthnets import ChannelGroup, GrowableNet


class GraphError(ValueError):
    """The model cannot be traced, or its groups cannot be derived; the message says which op and why."""


@dataclass(frozen=True)
class Segment:
    """A run of columns in a span: the units of ``group`` (``repeat`` columns each), or ``size`` fixed columns."""

    group: str | None
    size: int = 0  # fixed segments only
    repeat: int = 1

    def columns(self, widths: dict[str, int]) -> int:
        return self.size if self.group is None else widths[self.group] * self.repeat


@dataclass(frozen=True)
class Span:
    """A tensor dim laid out as several segments in a row; ``role`` says whether it feeds on the groups'
    outputs (``consumer``: its new columns start at zero) or belongs to them (``producer``: copied with the
    units; ``fill`` is the value of new parentless units, 1.0 for a BatchNorm scale or running variance)."""

    tensor: str
    dim: int
    role: str
    segments: tuple[Segment, ...]
    fill: float | None = None

    def size(self, widths: dict[str, int]) -> int:
        return sum(s.columns(widths) for s in self.segments)

    def index(self, widths: dict[str, int], maps: dict[str, torch.Tensor]) -> torch.Tensor:
        """New column → old column, for the groups in ``maps`` mapped by their index (−1: a parentless unit,
        its columns −1 too); ``widths`` are the widths before the change."""
        parts, offset = [], 0
        for seg in self.segments:
            n = seg.columns(widths)
            if seg.group in maps:
                units = maps[seg.group].long()
                cols = (units.view(-1, 1) * seg.repeat + torch.arange(seg.repeat)).view(-1) + offset
                parts.append(torch.where(units.repeat_interleave(seg.repeat) >= 0, cols, -1))
            else:
                parts.append(torch.arange(offset, offset + n))
            offset += n
        return torch.cat(parts)

    def expand(self, widths_after: dict[str, int], per_unit: dict[str, torch.Tensor], default) -> torch.Tensor:
        """A per-unit vector of each group in ``per_unit`` spread over the new columns; ``default`` elsewhere."""
        parts = []
        for seg in self.segments:
            if seg.group in per_unit:
                parts.append(per_unit[seg.group].repeat_interleave(seg.repeat))
            else:
                parts.append(torch.full((seg.columns(widths_after),), default, dtype=torch.float32))
        return torch.cat(parts).to(next(iter(per_unit.values())).dtype if per_unit else torch.float32)


@dataclass
class Analysis:
    """What tracing found: the groups' members, and the fixed spaces with their reasons."""

    groups: list  # list[ChannelGroup]
    fixed: dict[str, str] = field(default_factory=dict)  # a name for the space → why it cannot change


# Modules and functions that keep their input's channel layout.
_KEEP_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.SiLU,
    nn.GELU,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Sigmoid,
    nn.Tanh,
    nn.LeakyReLU,
    nn.ELU,
    nn.Mish,
    nn.Dropout,
    nn.Dropout2d,
    nn.Identity,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
)
_KEEP_FUNCTIONS = {
    torch.relu,
    torch.relu_,
    F.relu,
    F.relu6,
    F.silu,
    F.gelu,
    F.hardswish,
    F.hardsigmoid,
    torch.sigmoid,
    F.sigmoid,
    torch.tanh,
    F.leaky_relu,
    F.dropout,
    F.max_pool2d,
    F.avg_pool2d,
    F.adaptive_avg_pool2d,
    F.adaptive_max_pool2d,
}
try:  # EfficientNet's and ConvNeXt's residual branches: a per-sample gate [N, 1, 1, 1]
    from torchvision.ops import stochastic_depth

    _KEEP_FUNCTIONS.add(stochastic_depth)
except ImportError:  # pragma: no cover - torchvision is a dependency
    pass
_KEEP_METHODS = {"relu", "relu_", "sigmoid", "contiguous", "clone", "float", "to"}
_ELEMENTWISE = {operator.add, operator.iadd, operator.mul, operator.imul, operator.sub, torch.add, torch.mul}
_ELEMENTWISE_METHODS = {"add", "add_", "mul", "mul_"}
_NORMS = (nn.BatchNorm2d, nn.BatchNorm1d)


class _Spaces:
    """Union-find over channel spaces, with sizes, fixed reasons and producers."""

    def __init__(self):
        self.parent: list[int] = []
        self.size: list[int] = []
        self.fixed: dict[int, str] = {}
        self.origin: list[str] = []  # the module that started the space (names groups and fixed spaces)

    def new(self, size: int, origin: str, fixed: str | None = None) -> int:
        self.parent.append(len(self.parent))
        self.size.append(size)
        self.origin.append(origin)
        if fixed:
            self.fixed[len(self.parent) - 1] = fixed
        return len(self.parent) - 1

    def find(self, s: int) -> int:
        while self.parent[s] != s:
            self.parent[s] = self.parent[self.parent[s]]
            s = self.parent[s]
        return s

    def union(self, a: int, b: int) -> None:
        a, b = self.find(a), self.find(b)
        if a == b:
            return
        if b < a:
            a, b = b, a  # the earlier space stays the root: groups are named after their first producer
        self.parent[b] = a
        if b in self.fixed and a not in self.fixed:
            self.fixed[a] = self.fixed[b]

    def fix(self, layout, reason: str) -> None:
        if not layout or layout == ("raw",):
            return
        for space, _ in layout:
            root = self.find(space)
            self.fixed.setdefault(root, reason)


def analyse(net: nn.Module, example: torch.Tensor, prefix: str = "") -> Analysis:
    """Trace ``net`` on ``example`` (meta tensors are fine) and derive its channel groups; qualified names get
    ``prefix``. Raises :class:`GraphError` when the model cannot be traced."""
    try:
        graph_module = fx.symbolic_trace(net)
    except Exception as err:  # fx raises many kinds (TraceError, TypeError, NotImplementedError, ...)
        raise GraphError(
            f"torch.fx cannot trace it ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
            "CGaP finds the channel groups in the traced graph, so the forward must not branch on tensor values"
        ) from None
    was_training = net.training
    graph_module.eval()  # BatchNorm in training mode refuses one value per channel
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # ShapeProp prints the traceback of a failing node
            ShapeProp(graph_module).propagate(example)
    except Exception as err:
        raise GraphError(
            f"it fails on a {tuple(example.shape)} input ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''})"
        ) from None
    finally:
        net.train(was_training)

    spaces = _Spaces()
    modules = dict(graph_module.named_modules())
    layouts: dict[fx.Node, tuple | None] = {}
    members: dict[tuple[str, int], tuple[str, tuple, float | None]] = {}  # (tensor, dim) → (role, layout, fill)
    weights: list[tuple[str, tuple]] = []  # (filter weight, its output layout), in graph order: saliency sources
    norms: list[tuple] = []  # (layout, (γ, β)) of every BatchNorm, in graph order (for bn_taylor)

    def shape(node) -> torch.Size | None:
        meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
        return getattr(meta, "shape", None)

    def layout_of(arg):
        return layouts.get(arg) if isinstance(arg, fx.Node) else None

    def fresh(node, reason: str | None, origin: str) -> tuple | None:
        s = shape(node)
        if s is None or len(s) < 2:
            return None
        return ((spaces.new(s[1], origin, reason), 1),)

    def member(tensor: str, dim: int, role: str, layout, fill: float | None = None) -> None:
        key = (prefix + tensor, dim)
        if key in members and members[key][1] != layout:  # a module called twice on different channels
            spaces.fix(layout, f"{tensor} is used on different channels")
            spaces.fix(members[key][1], f"{tensor} is used on different channels")
        members[key] = (role, layout, fill)

    def unknown(node, why: str):
        for arg in node.all_input_nodes:
            spaces.fix(layouts.get(arg), why)
        return fresh(node, why, str(node.target))

    for node in graph_module.graph.nodes:
        args = node.args
        if node.op == "placeholder":
            layouts[node] = fresh(node, "the model's input", "input")
        elif node.op == "get_attr":
            layouts[node] = ("raw",)  # a raw parameter in the graph: the ops it meets are unknown below
        elif node.op == "output":
            for arg in node.all_input_nodes:
                spaces.fix(layouts.get(arg), "the model's output")
        elif node.op == "call_module":
            m, name = modules[node.target], node.target
            inp = layout_of(args[0]) if args else None
            if inp == ("raw",):
                layouts[node] = unknown(node, f"{name} takes a raw parameter")
            elif isinstance(m, nn.Conv2d):
                in_shape = shape(args[0])
                if m.groups == 1:
                    member(f"{name}.weight", 1, "consumer", inp)
                    out = fresh(node, None, name)
                elif m.groups == m.in_channels == m.out_channels:  # depthwise: in and out channels together
                    out = inp
                else:
                    layouts[node] = unknown(node, f"grouped convolution {name} ({m.groups} groups)")
                    continue
                if in_shape is None or out is None:
                    layouts[node] = unknown(node, f"{name} has an input of unknown shape")
                    continue
                member(f"{name}.weight", 0, "producer", out)
                if m.bias is not None:
                    member(f"{name}.bias", 0, "producer", out)
                weights.append((f"{name}.weight", out))
                layouts[node] = out
            elif isinstance(m, nn.Linear):
                s = shape(args[0])
                if s is None or len(s) != 2:
                    layouts[node] = unknown(node, f"{name} is applied to a tensor of rank {len(s) if s else '?'}")
                    continue
                member(f"{name}.weight", 1, "consumer", inp)
                out = fresh(node, None, name)
                member(f"{name}.weight", 0, "producer", out)
                if m.bias is not None:
                    member(f"{name}.bias", 0, "producer", out)
                weights.append((f"{name}.weight", out))
                layouts[node] = out
            elif isinstance(m, _NORMS) and m.affine and m.track_running_stats:
                for attr, fill in (("weight", 1.0), ("bias", None), ("running_mean", None), ("running_var", 1.0)):
                    member(f"{name}.{attr}", 0, "producer", inp, fill)
                norms.append((inp, (prefix + f"{name}.weight", prefix + f"{name}.bias")))
                layouts[node] = inp
            elif isinstance(m, _KEEP_MODULES):
                layouts[node] = inp
            elif isinstance(m, nn.Flatten):
                layouts[node] = _flatten(node, inp, m.start_dim, m.end_dim, shape) or unknown(node, f"{name} flatten")
            else:
                layouts[node] = unknown(node, f"{name} ({type(m).__name__}) is not a layer CGaP can resize")
        elif node.op in ("call_function", "call_method"):
            target = node.target
            inp = layout_of(args[0]) if args else None
            inputs = [layouts.get(a) for a in node.all_input_nodes]
            if any(lay == ("raw",) for lay in inputs):
                layouts[node] = unknown(node, f"{target} takes a raw parameter")
            elif target in _KEEP_FUNCTIONS or (node.op == "call_method" and target in _KEEP_METHODS):
                layouts[node] = inp if _same_channels(node, args[0], shape) else unknown(node, f"{target}")
            elif target in _ELEMENTWISE or (node.op == "call_method" and target in _ELEMENTWISE_METHODS):
                layouts[node] = _elementwise(node, args, layouts, spaces, shape) or unknown(node, f"{target}")
            elif target is torch.cat:
                layouts[node] = _cat(node, layouts, shape) or unknown(node, "a concatenation")
            elif target is torch.flatten or (node.op == "call_method" and target == "flatten"):
                start = args[1] if len(args) > 1 else node.kwargs.get("start_dim", 0)
                end = args[2] if len(args) > 2 else node.kwargs.get("end_dim", -1)
                layouts[node] = _flatten(node, inp, start, end, shape) or unknown(node, "a flatten")
            elif node.op == "call_method" and target in ("view", "reshape"):
                s_in, s_out = shape(args[0]), shape(node)
                if s_in is not None and s_out is not None and len(s_out) == 2 and s_out[0] == s_in[0]:
                    layouts[node] = _flatten(node, inp, 1, -1, shape) or unknown(node, f"a {target}")
                else:
                    layouts[node] = unknown(node, f"a {target}")
            elif target in (getattr, operator.getitem) and not isinstance(shape(node), torch.Size):
                layouts[node] = None  # .shape, .size(): numbers, no channels
            elif node.op == "call_method" and target in ("size", "dim"):
                layouts[node] = None
            elif target is torch.mean or (node.op == "call_method" and target == "mean"):
                keeps = _same_channels(node, args[0], shape) and 1 not in _dims(args, node)
                layouts[node] = inp if keeps else unknown(node, "a mean over channels")
            else:
                layouts[node] = unknown(node, f"{getattr(target, '__name__', target)}")

    # Groups: one per unfixed space with a filter of its own; members sorted into plain ones and spans.
    def root(layout) -> int | None:
        """The space of a layout that is one whole space (no repeat), else None."""
        return spaces.find(layout[0][0]) if layout and len(layout) == 1 and layout[0][1] == 1 else None

    group_name: dict[int, str] = {}  # root space → group name (the module that started it: its first producer)
    saliency: dict[str, str] = {}  # group → the first filter weight producing it
    fixed: dict[str, str] = {}
    for tensor, layout in weights:
        r = root(layout)
        if r is None:
            continue
        if r in spaces.fixed:
            fixed.setdefault(spaces.origin[r], spaces.fixed[r])
            continue
        name = group_name.setdefault(r, spaces.origin[r])
        saliency.setdefault(name, prefix + tensor)
    plain = {name: {"producer": [], "consumer": []} for name in group_name.values()}
    spans: dict[str, list[Span]] = {name: [] for name in group_name.values()}
    for (tensor, dim), (role, layout, fill) in members.items():
        roots = [(spaces.find(s), r) for s, r in layout or ()]
        touched = list(dict.fromkeys(group_name[s] for s, _ in roots if s in group_name))
        if not touched:
            continue
        if len(roots) == 1 and roots[0][1] == 1:
            plain[touched[0]][role].append((tensor, dim))
            continue
        segments = tuple(
            Segment(group_name[s], 0, r) if s in group_name else Segment(None, spaces.size[s] * r) for s, r in roots
        )
        for name in touched:
            spans[name].append(Span(tensor, dim, role, segments, fill))
    groups = []
    for r, name in group_name.items():
        producers = tuple(plain[name]["producer"])
        norm_affine = next((pair for layout, pair in norms if root(layout) == r), ())
        groups.append(
            ChannelGroup(
                name,
                producers,
                tuple(plain[name]["consumer"]),
                saliency[name],
                ones=tuple(t for t, d in producers if members[(t, d)][2] == 1.0),
                norm_affine=norm_affine,
                spans=tuple(spans[name]),
            )
        )
    return Analysis(groups, fixed)


def _dims(args, node) -> tuple:
    dims = args[1] if len(args) > 1 else node.kwargs.get("dim", ())
    return tuple(dims) if isinstance(dims, (list, tuple)) else (dims,)


def _same_channels(node, arg, shape) -> bool:
    s_in, s_out = shape(arg), shape(node)
    return s_in is not None and s_out is not None and len(s_in) >= 2 and len(s_out) >= 2 and s_in[1] == s_out[1]


def _elementwise(node, args, layouts, spaces: _Spaces, shape):
    """Operands with channels unite channel by channel; a scalar or a tensor without channels keeps the layout."""
    tensors = [a for a in args if isinstance(a, fx.Node) and layouts.get(a)]
    if not tensors:
        return None
    out = shape(node)
    for a in args:
        if isinstance(a, fx.Node) and not layouts.get(a):
            s = shape(a)
            if s is not None and len(s) >= 2 and s[1] != 1:  # a tensor whose channels we do not know
                return None
    first = layouts[tensors[0]]
    for other in tensors[1:]:
        lay = layouts[other]
        if [r for _, r in lay] != [r for _, r in first] or [spaces.size[s] for s, _ in lay] != [
            spaces.size[s] for s, _ in first
        ]:
            return None
        for (a, _), (b, _) in zip(first, lay):
            spaces.union(a, b)
    if out is None or len(out) < 2:
        return None
    return first


def _cat(node, layouts, shape):
    tensors = node.args[0]
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    out = shape(node)
    if out is None or not isinstance(tensors, (list, tuple)) or dim not in (1, 1 - len(out)):
        return None
    parts = [layouts.get(t) if isinstance(t, fx.Node) else None for t in tensors]
    if any(not p or p == ("raw",) for p in parts):
        return None
    return tuple(entry for p in parts for entry in p)


def _flatten(node, inp, start, end, shape):
    """A flatten of [N, C, H, W] from dim 1 on: each channel becomes H·W consecutive columns."""
    s_in = shape(node.args[0])
    if not inp or s_in is None or len(s_in) < 2:
        return None
    if start % len(s_in) != 1 or end % len(s_in) != len(s_in) - 1:
        return None
    spatial = 1
    for d in s_in[2:]:
        spatial *= d
    return tuple((s, r * spatial) for s, r in inp)


# ------------------------------------------------------------------------------------------------ models by name


def is_graph_arch(arch: str) -> bool:
    """``torchvision:NAME`` or ``package.module:callable``: a model CGaP did not write, grouped by tracing."""
    return ":" in arch


def resolve_factory(arch: str):
    """The callable that builds ``arch``; raises GraphError naming what is wrong (with close names)."""
    source, _, name = arch.partition(":")
    if source == "torchvision":
        import difflib

        import torchvision.models as tvm

        names = tvm.list_models(module=tvm)  # the classification models
        if name not in names:
            close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
            hint = f"close names: {', '.join(close)}" if close else f"expected one of {', '.join(names)}"
            raise GraphError(f"unknown torchvision classification model {name!r}; {hint}")
        return lambda **kwargs: tvm.get_model(name, weights=None, **kwargs)
    if not source or not name:
        raise GraphError(f'expected "torchvision:NAME" or "package.module:callable", got {arch!r}')
    import importlib

    try:
        module = importlib.import_module(source)
    except Exception as err:  # ModuleNotFoundError, or the module's own import failing
        raise GraphError(f"cannot import {source!r} ({type(err).__name__}: {err})") from None
    build = getattr(module, name, None)
    if not callable(build):
        raise GraphError(f"{source!r} has no callable {name!r}")
    return build


def instantiate(arch: str, kwargs: dict, num_classes: int) -> nn.Module:
    """Build ``arch`` with ``kwargs`` and the data's class count (when the callable takes ``num_classes``)."""
    import inspect

    build = resolve_factory(arch)
    kwargs = dict(kwargs)
    try:
        params = inspect.signature(build).parameters
        takes = "num_classes" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
    except (TypeError, ValueError):
        takes = True
    if takes:
        kwargs.setdefault("num_classes", num_classes)
    try:
        net = build(**kwargs)
    except Exception as err:
        raise GraphError(f"building it with {kwargs} failed ({type(err).__name__}: {err})") from None
    if not isinstance(net, nn.Module):
        raise GraphError(f"expected the callable to return an nn.Module, got {type(net).__name__}")
    return net


_ANALYSES: dict[str, Analysis] = {}


def _analysis(spec) -> Analysis:
    """The groups of ``spec``'s model (traced once per spec, on the meta device)."""
    import json

    key = json.dumps(spec.to_dict(), sort_keys=True, default=str)
    if key not in _ANALYSES:
        try:
            with torch.device("meta"):
                net = instantiate(spec.arch, spec.kwargs, spec.num_classes)
            device = "meta"
        except GraphError:  # an initialiser that reads values (RegNet's): on the CPU, once
            net = instantiate(spec.arch, spec.kwargs, spec.num_classes)
            device = "cpu"
        example = torch.zeros(2, spec.in_channels, spec.image_size, spec.image_size, device=device)
        try:
            out = _output_shape(net, example)
        except Exception as err:
            raise GraphError(
                f"it fails on a {tuple(example.shape)} input ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''})"
            ) from None
        analysis = analyse(net, example, prefix="net.")
        if out is not None and tuple(out) != (2, spec.num_classes):
            raise GraphError(f"it returns outputs of shape {tuple(out)} for 2 images; expected (2, {spec.num_classes})")
        if not analysis.groups:
            raise GraphError(f"no channel group can change width ({_fixed_text(analysis.fixed)})")
        _ANALYSES[key] = analysis
    return _ANALYSES[key]


def _output_shape(net: nn.Module, example: torch.Tensor):
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            out = net(example)
    finally:
        net.train(was_training)
    return getattr(out, "shape", None)


def _fixed_text(fixed: dict[str, str]) -> str:
    return "; ".join(f"{name}: {why}" for name, why in fixed.items()) or "none fixed"


def fixed_groups(spec) -> dict[str, str]:
    """The channels of ``spec``'s model that keep their width, by the module that produces them, with why."""
    return dict(_analysis(spec).fixed) if is_graph_arch(spec.arch) else {}


class GraphNet(GrowableNet):
    """Any traced CNN as a :class:`GrowableNet`: ``net`` is the user's module, ``groups`` come from tracing it."""

    def __init__(self, net: nn.Module, analysis: Analysis):
        super().__init__()
        self.net = net
        self.groups = list(analysis.groups)
        self.fixed = dict(analysis.fixed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def build_graph_model(spec, widths: dict[str, int] | None, device) -> GraphNet:
    """``spec``'s model at full width, then cut to ``widths`` (each group keeps its first units)."""
    analysis = _analysis(spec)
    try:
        with torch.device(device):
            net = instantiate(spec.arch, spec.kwargs, spec.num_classes)
    except GraphError:
        if str(device) != "meta":
            raise
        net = instantiate(spec.arch, spec.kwargs, spec.num_classes).to("meta")  # an initialiser that reads values
    model = GraphNet(net, analysis)
    if widths is not None:
        narrow_(model, widths)
    return model


@torch.no_grad()
def narrow_(model: GrowableNet, widths: dict[str, int]) -> None:
    """Cut every group of ``model`` to its first ``widths[name]`` units, in place (works on the meta device)."""
    full = model.widths
    unknown = [k for k in widths if k not in full]
    if unknown:
        raise ValueError(f"widths: unknown groups {unknown}; the model's groups are {list(full)}")
    too_wide = [f"{k} ({w} > {full[k]})" for k, w in widths.items() if w > full[k]]
    if too_wide:
        raise ValueError(f"widths: wider than the model as built: {', '.join(too_wide)}")
    cut = {g.name: g for g in model.groups if widths.get(g.name, full[g.name]) < full[g.name]}
    maps = {name: torch.arange(widths[name]) for name in cut}
    done = set()
    for name, group in cut.items():
        for qualname, dim in group.producers + group.consumers:
            _set(model, qualname, model.tensor(qualname).narrow(dim, 0, widths[name]).clone())
        for span in group.spans:
            if (span.tensor, span.dim) in done:
                continue
            done.add((span.tensor, span.dim))
            tensor = model.tensor(span.tensor)
            _set(model, span.tensor, tensor.index_select(span.dim, span.index(full, maps).to(tensor.device)))
    model.sync_shapes()


def _set(model: nn.Module, qualname: str, value: torch.Tensor) -> None:
    module_name, _, attr = qualname.rpartition(".")
    module = model.get_submodule(module_name)
    if isinstance(getattr(module, attr), nn.Parameter):
        getattr(module, attr).data = value
    else:
        module._buffers[attr] = value
