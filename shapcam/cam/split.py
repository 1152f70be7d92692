"""Split a network at a layer into a trunk (run once per image) and a head (run per coalition).

The default splitter traces the model with torch.fx, keeping the target layer as one node, and
builds the head graph from the nodes that depend on the layer's output. Values the head needs from
before the layer (a skip connection over it, the input itself) are computed once by the trunk and
broadcast over the coalition batch. Models that fx cannot trace fall back to hooks: the head then
runs the whole network with the layer's output replaced, which is correct but recomputes the
trunk for every batch of coalitions (a warning says so).
"""
from __future__ import annotations

import contextlib
import difflib
import warnings
from dataclasses import dataclass

import torch
from torch import nn


def call_site(name: str) -> tuple[str, int | None]:
    """(module name, call index) of a layer name: "features.3" is a module, called once;
    "_swish@16" is the 17th call (from 0; negative from the end) of a module the forward calls
    several times — a shared activation, whose output at one call site is the feature map."""
    base, at, k = name.rpartition("@")
    if not at:
        return name, None
    try:
        return base, int(k)
    except ValueError:
        raise ValueError(f"target_layer: {name!r}: after '@' comes a call index (an int)") from None


def resolve_layer(model: nn.Module, target_layer) -> tuple[str, nn.Module]:
    """(dotted name, module) of target_layer, given as a module of model or its dotted name
    (``"name@k"``: the k-th call of a module called several times; see call_site)."""
    names = dict(model.named_modules())
    if isinstance(target_layer, str):
        base, k = call_site(target_layer)
        if k is not None and base in names and base:
            return target_layer, names[base]
        if target_layer not in names or target_layer == "":
            candidates = [n for n in names if n]
            close = difflib.get_close_matches(target_layer, candidates, n=8, cutoff=0.4)
            shown = close or candidates[-12:]
            raise ValueError(f"target_layer: no module named {target_layer!r} in "
                             f"{type(model).__name__}; candidates: {', '.join(shown)}")
        return target_layer, names[target_layer]
    if isinstance(target_layer, nn.Module):
        for name, mod in names.items():
            if mod is target_layer and name:
                return name, mod
        raise ValueError("target_layer: the module given is not a submodule of the model")
    raise TypeError(f"target_layer: expected a module or a dotted name, got {type(target_layer).__name__}")


@dataclass
class Split:
    """trunk(images [N, ...]) -> (A [N, C, h, w], extras); head(A_batch [B, C, h, w], extras of
    one image, inplace_ok=False) -> model output [B, classes].

    The head never modifies the feature map it is given (an in-place ReLU or ``out += identity``
    after the layer would otherwise change the caller's A): it works on a copy, unless the caller
    passes ``inplace_ok=True`` for a scratch buffer it rewrites anyway (Shap-CAM's masked
    features)."""

    trunk: object
    head: object
    layer_name: str
    method: str  # "fx" or "hooks"
    head_module: object = None  # the module whose parameters the head uses


class SplitError(ValueError):
    """The target layer cannot be split at, whatever the splitter (called twice, not feeding the
    output): re-raised by split="auto" instead of falling back to hooks."""


class _LeafTracer(torch.fx.Tracer):
    def __init__(self, leaf: nn.Module):
        super().__init__()
        self._leaf = leaf

    def is_leaf_module(self, m, qualname):
        return m is self._leaf or super().is_leaf_module(m, qualname)


def _is_batch_size_read(node) -> bool:
    """x.size(0), x.size()[0] or x.shape[0] of a batched tensor: the batch size."""
    import builtins
    import operator

    if node.op == "call_method" and node.target == "size":
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        return dim == 0
    if node.op == "call_function" and node.target is operator.getitem and len(node.args) == 2 \
            and node.args[1] == 0 and isinstance(node.args[0], torch.fx.Node):
        src = node.args[0]
        if src.op == "call_method" and src.target == "size" and len(src.args) == 1 and not src.kwargs:
            return True
        return src.op == "call_function" and src.target is builtins.getattr and src.args[1] == "shape"
    return False


def _fx_split(model, name, layer) -> Split:
    tracer = _LeafTracer(layer)
    graph = tracer.trace(model)
    gm = torch.fx.GraphModule(tracer.root, graph)
    nodes = list(gm.graph.nodes)
    base, k = call_site(name)
    calls = [n for n in nodes if n.op == "call_module" and n.target == base]
    if not calls:
        raise RuntimeError(f"layer {name!r} is not called in the traced forward")
    if k is None and len(calls) > 1:
        raise SplitError(_shared_message(base, len(calls)))
    if k is not None and not -len(calls) <= k < len(calls):
        raise SplitError(f"target_layer {name!r}: {base!r} is called {len(calls)} times "
                         f"(calls {base}@0 .. {base}@{len(calls) - 1})")
    tnode = calls[0 if k is None else k]
    dependents = set()
    for n in nodes[nodes.index(tnode) + 1:]:
        if any(a is tnode or a in dependents for a in n.all_input_nodes):
            dependents.add(n)
    out = next(n for n in nodes if n.op == "output")
    if out not in dependents:
        raise SplitError(f"target_layer {name!r}: its output does not feed the model's output "
                         "(pick a layer on the path to the logits)")
    frontier = []
    for n in nodes:
        if n in dependents:
            for a in n.all_input_nodes:
                if a is not tnode and a not in dependents and a.op != "get_attr" and a not in frontier:
                    frontier.append(a)
    head_graph = torch.fx.Graph()
    env = {tnode: head_graph.placeholder("activation")}
    # A batch size read before the layer (`bs = x.size(0)`, `x.shape[0]`: EfficientNet-PyTorch)
    # would be stale for a batch of coalitions: in the head it is read off the activation instead.
    batch_reads = [f for f in frontier if _is_batch_size_read(f)]
    for f in batch_reads:
        env[f] = head_graph.call_method("size", (env[tnode], 0))
    frontier = [f for f in frontier if f not in batch_reads]
    for i, f in enumerate(frontier):
        env[f] = head_graph.placeholder(f"extra_{i}")
    for n in nodes:
        if n in dependents:
            if n.op == "output":
                head_graph.output(torch.fx.graph.map_arg(n.args[0], lambda a: env[a]))
            else:
                for a in n.all_input_nodes:
                    if a.op == "get_attr" and a not in env:
                        env[a] = head_graph.node_copy(a)
                env[n] = head_graph.node_copy(n, lambda a: env[a])
    head_gm = torch.fx.GraphModule(gm, head_graph)
    wanted = [tnode] + frontier
    # The trunk: only the ancestors of the layer and of the head's extra inputs, as generated code
    # (not an interpreter): the rest of the forward is the head's business.
    needed, stack = set(), list(wanted)
    while stack:
        n = stack.pop()
        if n not in needed:
            needed.add(n)
            stack.extend(n.all_input_nodes)
    trunk_graph = torch.fx.Graph()
    tenv = {}
    for n in nodes:
        if n in needed or n.op == "placeholder":
            tenv[n] = trunk_graph.node_copy(n, lambda a: tenv[a])
    trunk_graph.output(tuple(tenv[n] for n in wanted))
    trunk_gm = torch.fx.GraphModule(gm, trunk_graph)

    def trunk(images):
        outs = trunk_gm(images)
        return outs[0], list(outs[1:])

    def head(acts, extras, inplace_ok=False):
        B = acts.shape[0]
        expanded = [e.expand((B,) + tuple(e.shape[1:])) if torch.is_tensor(e) and e.dim() > 0 and
                    e.shape[0] == 1 else e for e in extras]
        return head_gm(acts if inplace_ok else acts.clone(), *expanded)

    return Split(trunk=trunk, head=head, layer_name=name, method="fx", head_module=head_gm)


@contextlib.contextmanager
def _hook(module, fn):
    handle = module.register_forward_hook(fn)
    try:
        yield
    finally:
        handle.remove()


def layer_output_error(name, out) -> str:
    """The message for a target layer whose output is not one tensor."""
    what = type(out).__name__
    if isinstance(out, (tuple, list)):
        what = f"a {what} of {len(out)} ({', '.join(type(o).__name__ for o in out[:4])})"
    elif isinstance(out, dict):
        what = f"a dict (keys {list(out)[:4]})"
    return (f"target_layer {name!r} returns {what}; a CAM needs a layer whose output is the "
            f"feature map as one tensor: pick the submodule that makes it (e.g. {name!r}'s last "
            f"convolution)")


def _shared_message(base, count):
    return (f"target_layer {base!r} is called {count} times in the forward (a shared module): "
            f"name one call, {base}@0 .. {base}@{count - 1} ({base}@-1 the last), or a layer "
            f"that is called once")


def _hook_split(model, name, layer) -> Split:
    base, k = call_site(name)
    calls = {}  # the forward's number of calls of the layer, from the trunk's run

    def trunk(images):
        store = {"calls": 0}

        def grab(_m, _i, out):
            i = store["calls"]
            store["calls"] += 1
            if k is None and i >= 1:
                return  # a shared module: refused once the forward has counted its calls
            if k is None or i == k or k < 0:
                if not torch.is_tensor(out):
                    raise SplitError(layer_output_error(name, out))
                if k is None or i == k:
                    store["a"] = out.clone()  # the rest of the forward may change `out` in place
                else:  # from the end: the last -k calls' outputs kept until the forward ends
                    store.setdefault("tail", []).append(out.clone())
                    del store["tail"][:-(-k)]

        with _hook(layer, grab):
            model(images)
        calls["n"] = store["calls"]
        if k is None and store["calls"] > 1:
            raise SplitError(_shared_message(base, store["calls"]))
        if k is not None and k < 0 and len(store.get("tail", ())) == -k:
            store["a"] = store["tail"][0]
        if "a" not in store:
            if store["calls"]:
                raise SplitError(f"target_layer {name!r}: {base!r} is called {store['calls']} "
                                 f"times in the forward")
            raise RuntimeError(f"layer {name!r} was not called in the forward pass")
        return store["a"], [images]

    def head(acts, extras, inplace_ok=False):
        image = extras[0]
        B = acts.shape[0]
        at = {"i": 0}
        want = 0 if k is None else (k if k >= 0 else calls.get("n", 0) + k)

        def replace(_m, _i, out):
            i = at["i"]
            at["i"] += 1
            if i != want:
                return None  # another call of a shared module: its own output
            if out.shape[1:] != acts.shape[1:]:
                raise RuntimeError("layer output shape changed")
            return acts if inplace_ok else acts.clone()

        with _hook(layer, replace):
            out = model(image.expand((B,) + tuple(image.shape[1:])))
        return out

    return Split(trunk=trunk, head=head, layer_name=name, method="hooks", head_module=model)


def split_model(model: nn.Module, target_layer, method: str = "auto") -> Split:
    """Split model at target_layer. method: "fx", "hooks", or "auto" (fx, else hooks + warning)."""
    name, layer = resolve_layer(model, target_layer)
    if method not in ("auto", "fx", "hooks"):
        raise ValueError(f"split: expected 'auto', 'fx' or 'hooks', got {method!r}")
    if method == "hooks":
        return _hook_split(model, name, layer)
    try:
        return _fx_split(model, name, layer)
    except SplitError:
        raise
    except Exception as exc:  # tracing failed: dynamic control flow (fx's TraceError is a
        # ValueError), unsupported ops
        if method == "fx":
            raise
        warnings.warn(f"torch.fx could not trace {type(model).__name__} ({type(exc).__name__}: "
                      f"{exc}); falling back to hooks, which run the whole network for every "
                      "batch of coalitions (slower)", RuntimeWarning, stacklevel=3)
        return _hook_split(model, name, layer)
