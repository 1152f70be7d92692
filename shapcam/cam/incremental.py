"""Exact incremental evaluation of Shap-CAM's coalitions on the heads most CNNs have.

A head qualifies when, from the target layer's feature map A [C, h, w], it is

1. position-wise ops (ReLU & co., eval-mode BatchNorm, 1x1 convolutions, dropout in eval, scalar
   arithmetic): they commute with masking — a removed position carries f(baseline);
2. then a reduction that sends disjoint cells of positions to a vector z and is affine per cell:
   global average pooling (+ flatten + Linear), flatten + Linear, or non-overlapping max pooling
   (kernel = stride, no padding, cells of up to 8 positions) + flatten + Linear;
3. then anything (the readout g) that uses only z.

Then v(S) = g(z(S)) with z(S) = z_empty + sum_cells (T[cell, S ∩ cell] - T[cell, {}]): a
:class:`~shapcam.games.CellTableGame` whose tables come from one small batched pass per image,
and whose coalitions cost one readout each (csrc/include/shapcam/walk.h walks the prefixes).
:func:`plan_head` says why a head does not qualify (the op that blocks), so ShapCAM can fall back
to the fused path or, with ``incremental=True``, refuse with that reason.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


class NotIncremental(ValueError):
    """The head does not have the structure the incremental path needs; the message says why."""


POINTWISE_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
                     nn.Mish, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh,
                     nn.Softplus, nn.Identity, nn.Dropout, nn.Dropout2d, nn.AlphaDropout,
                     nn.BatchNorm2d)
POINTWISE_FUNCTIONS = {torch.relu, torch.relu_, F.relu, F.relu_, F.relu6, F.silu, F.gelu,
                       F.hardswish, F.hardsigmoid, F.hardtanh, F.leaky_relu, F.elu, F.mish,
                       torch.sigmoid, torch.tanh, F.sigmoid, F.tanh}
POINTWISE_METHODS = {"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "contiguous", "clone"}
SCALAR_OPS = {operator.mul, operator.add, operator.sub, operator.truediv, torch.mul, torch.add}
RESHAPE_METHODS = {"flatten", "view", "reshape", "squeeze"}


@dataclass
class HeadPlan:
    """How a head splits into position-wise ops, a cell reduction and a readout."""

    pointwise: object          # GraphModule x -> f(x), or None
    kind: str                  # "gap", "flatten" or "maxpool"
    spatial: list              # per-channel linear spatial ops (adaptive avg pools) before flatten
    layout: tuple | None       # axis order of a permute before flatten (ONet), or None
    k: int                     # max-pool kernel (cells of k*k positions)
    linear: nn.Linear | None   # the affine map folded into the tables
    readout: object            # GraphModule z -> output, or None (z is the output)
    z_shape: tuple             # per-image shape the readout takes z in
    d: int

    @property
    def additive(self) -> bool:
        """The output is z itself: with the logit as value the game is a sum of cell games."""
        return self.readout is None


def _describe(node, gm):
    if node.op == "call_module":
        return f"{node.target} ({type(gm.get_submodule(node.target)).__name__})"
    if node.op == "call_function":
        return getattr(node.target, "__name__", str(node.target))
    return f"{node.op} {node.target}"


def _is_meta(node):
    """A node that reads only a tensor's metadata (x.size(0), x.shape[0], x.dim()): it does not
    carry values through the head."""
    import builtins

    if node.op == "call_method" and node.target in ("size", "dim"):
        return True
    if node.op == "call_function" and node.target is builtins.getattr and \
            len(node.args) > 1 and node.args[1] in ("shape", "dtype", "device", "ndim"):
        return True
    if node.op == "call_function" and node.target is operator.getitem and node.args and \
            hasattr(node.args[0], "op") and _is_meta(node.args[0]):
        return True
    return False


def _only_chain_input(node, prev):
    """node takes prev as its one graph input (other arguments constants or metadata of prev)."""
    for a in node.all_input_nodes:
        if a is prev or _is_meta(a):
            continue
        return False
    return bool(node.args) and node.args[0] is prev


class _Shapes(torch.fx.Interpreter):
    """Runs the head once on an example, noting each node's output shape (torch.fx's ShapeProp
    would do too, but imports sympy: a second of start-up)."""

    def run_node(self, n):
        out = super().run_node(n)
        if torch.is_tensor(out):
            n.meta["shapecam_shape"] = tuple(out.shape)
        return out


def _shape(node):
    return node.meta.get("shapecam_shape")


def _classify(node, prev, gm):
    """What node does to the chain value: 'pointwise', 'gap', 'maxpool', 'reshape', 'identity',
    'linear', or None (anything else)."""
    if not _only_chain_input(node, prev):
        return None
    src, out = _shape(prev), _shape(node)
    if node.op == "call_module":
        m = gm.get_submodule(node.target)
        if isinstance(m, (nn.Dropout, nn.Dropout2d, nn.AlphaDropout, nn.Identity)):
            return "identity"
        if isinstance(m, POINTWISE_MODULES):
            return "pointwise"
        if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride == (1, 1) and \
                m.padding in ((0, 0), "valid") and m.dilation == (1, 1):
            return "pointwise"
        if isinstance(m, nn.AdaptiveAvgPool2d):
            if out is not None and out[-2:] == (1, 1):
                return "gap"
            if src is not None and out is not None and src[-2:] == out[-2:]:
                return "identity"
            return "spatial"  # linear per channel: folded into the Linear that follows
        if isinstance(m, nn.MaxPool2d):
            if _cell_pool_k(m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode):
                return "maxpool"
        if isinstance(m, nn.Flatten) and m.start_dim == 1:
            return "reshape"
        if isinstance(m, nn.Linear):
            return "linear"
        return None
    if node.op == "call_function":
        if node.target in POINTWISE_FUNCTIONS:
            return "pointwise"
        if node.target is F.dropout:
            training = node.kwargs.get("training", node.args[2] if len(node.args) > 2 else True)
            return "identity" if training is False else None
        if node.target in SCALAR_OPS and len(node.args) == 2 and isinstance(node.args[1], (int, float)):
            return "pointwise"
        if node.target is torch.flatten and (node.args[1:2] == (1,) or node.kwargs.get("start_dim") == 1):
            return "reshape"
        if node.target in (F.max_pool2d, torch.max_pool2d) and _maxpool_k(node, gm):
            return "maxpool"
        if node.target is F.adaptive_avg_pool2d and out is not None and out[-2:] == (1, 1):
            return "gap"
        if node.target is torch.mean and out is not None and src is not None and _is_gap_dims(node, src):
            return "gap"
        return None
    if node.op == "call_method" or node.target is torch.permute:
        if node.target in ("permute", torch.permute) and _permute_dims(node) is not None:
            return "permute"
        if node.target in POINTWISE_METHODS:
            return "pointwise"
        if node.target == "mean" and src is not None and _is_gap_dims(node, src):
            return "gap"
        if node.target in RESHAPE_METHODS and src is not None and out is not None and \
                out[0] == src[0] and _prod(out[1:]) == _prod(src[1:]):
            return "reshape"
    return None


def _single(v):
    if isinstance(v, int):
        return v
    if isinstance(v, (tuple, list)) and len(set(v)) == 1:
        return int(v[0])
    return None


def _cell_pool_k(kernel, stride, padding, dilation, ceil_mode):
    """k when a max pool cuts the map into disjoint k x k cells (kernel = stride, no padding)."""
    k, s = _single(kernel), _single(stride) if stride not in (None, ()) else _single(kernel)
    if k is None or k != s or _single(padding) != 0 or _single(dilation) != 1 or ceil_mode:
        return None
    return k


def _maxpool_k(node, gm):
    if node.op == "call_module":
        m = gm.get_submodule(node.target)
        return _cell_pool_k(m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode)
    names = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
    defaults = {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False, "return_indices": False}
    a = dict(defaults, **dict(zip(names, node.args)), **node.kwargs)
    if a["return_indices"]:
        return None
    return _cell_pool_k(a["kernel_size"], a["stride"], a["padding"], a["dilation"], a["ceil_mode"])


def _prod(t):
    p = 1
    for v in t:
        p *= int(v)
    return p


def _permute_dims(node):
    """The axis order of x.permute(0, a, b, c) / torch.permute(x, (0, a, b, c)) keeping the batch
    axis first, else None."""
    dims = node.args[1:] if len(node.args) > 2 else (node.args[1] if len(node.args) > 1 else node.kwargs.get("dims"))
    if isinstance(dims, (tuple, list)) and len(dims) == 1 and isinstance(dims[0], (tuple, list)):
        dims = dims[0]
    if not isinstance(dims, (tuple, list)) or len(dims) != 4 or not all(isinstance(d, int) for d in dims):
        return None
    dims = tuple(d % 4 for d in dims)
    return dims if dims[0] == 0 and sorted(dims) == [0, 1, 2, 3] else None


def _is_gap_dims(node, src):
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    if isinstance(dims, int):
        dims = (dims,)
    if not isinstance(dims, (tuple, list)) or len(src) != 4:
        return False
    return sorted(d % 4 for d in dims) == [2, 3]


def plan_head(split, A_example, extras_example) -> HeadPlan:
    """Find the position-wise / cell-reduction / readout structure of split's head, or raise
    NotIncremental naming what blocks it. A_example [1, C, h, w]: shapes are propagated on it."""
    if split.method != "fx":
        raise NotIncremental("the head is not an fx graph (the model fell back to the hooks split)")
    gm = split.head_module
    ex = [e[:1] if torch.is_tensor(e) and e.dim() > 0 else e for e in extras_example]
    with torch.no_grad():
        _Shapes(gm).run(A_example.clone(), *ex)
    nodes = list(gm.graph.nodes)
    act = next(n for n in nodes if n.op == "placeholder")
    h, w = A_example.shape[-2:]
    chain, state, k, linear, prev, spatial, layout = [], "pointwise", 1, None, act, [], None
    z_node = None
    while z_node is None:
        users = [u for u in prev.users if not _is_meta(u)]
        where = _describe(prev, gm) if prev is not act else "the target layer"
        if len(users) == 1 and users[0].op == "output":
            if state == "gap":
                z_node = prev
                break
            raise NotIncremental(f"the head ends after {where} without a reduction over positions")
        if len(users) != 1:
            raise NotIncremental(f"{where} feeds {len(users)} ops "
                                 f"({', '.join(_describe(u, gm) for u in users)}): the head mixes "
                                 "positions otherwise")
        node = users[0]
        kind = _classify(node, prev, gm)
        blocked = NotIncremental(f"{_describe(node, gm)} after {'the target layer' if prev is act else _describe(prev, gm)} "
                                 f"is not a position-wise op or a cell reduction")
        if state == "pointwise":
            if kind in ("pointwise", "identity"):
                chain.append(node)
            elif kind == "gap":
                state = "gap"
            elif kind == "maxpool":
                k = _maxpool_k(node, gm)
                if h % k or w % k:
                    raise NotIncremental(f"{_describe(node, gm)}: the {h}x{w} map does not split into {k}x{k} cells")
                if k * k > 8:
                    raise NotIncremental(f"{_describe(node, gm)}: {k}x{k} cells have more than 8 positions")
                state = "maxpool"
            elif kind == "reshape":
                state = "flatten"
            elif kind == "spatial":
                spatial.append(gm.get_submodule(node.target))
                state = "spatial"
            elif kind == "permute":  # e.g. ONet: permute(0, 3, 2, 1), then flatten + Linear
                layout, state = _permute_dims(node), "permuted"
            else:
                raise blocked
        elif state == "permuted":
            if kind == "identity" or (kind == "pointwise" and node.target == "contiguous"):
                pass
            elif kind == "reshape":
                state = "flatten"
            else:
                raise NotIncremental(f"{_describe(node, gm)} after a permute: flatten + Linear must follow")
        elif state == "gap":
            if kind in ("reshape", "identity"):
                pass
            elif kind == "linear":
                linear, z_node = gm.get_submodule(node.target), node
            else:
                z_node = prev  # the readout starts at node
                break
        elif state in ("maxpool", "spatial"):  # a pooled map: linear spatial ops, then flatten
            if kind == "identity":
                pass
            elif kind == "spatial":
                spatial.append(gm.get_submodule(node.target))
            elif kind == "reshape":
                state = "maxpool_flat" if state == "maxpool" else "flatten"
            else:
                raise NotIncremental(f"{_describe(node, gm)} after {'max' if state == 'maxpool' else 'average'}"
                                     " pooling: the pooled map must go through flatten + Linear")
        elif state in ("maxpool_flat", "flatten"):
            if kind == "identity":
                pass
            elif kind == "linear":
                linear, z_node = gm.get_submodule(node.target), node
            else:
                raise NotIncremental(f"{_describe(node, gm)} after flatten: a Linear layer must follow")
        prev = node
    readout = _readout_graph(gm, nodes, z_node)
    z_shape = _shape(z_node)[1:]
    pw = _pointwise_graph(gm, act, chain) if chain else None
    return HeadPlan(pointwise=pw, kind={"maxpool_flat": "maxpool"}.get(state, state), k=k,
                    spatial=spatial, layout=layout, linear=linear, readout=readout, z_shape=z_shape, d=_prod(z_shape))


def _pointwise_graph(gm, act, chain):
    g = torch.fx.Graph()
    env = {act: g.placeholder("x")}
    for n in chain:
        env[n] = g.node_copy(n, lambda a: env[a])
    g.output(env[chain[-1]])
    return torch.fx.GraphModule(gm, g)


def _readout_graph(gm, nodes, z_node):
    """The rest of the head as a GraphModule z -> output, or None when the output is z itself."""
    after = nodes[nodes.index(z_node) + 1:]
    dependents = {z_node}
    for n in after:
        if any(a in dependents for a in n.all_input_nodes):
            dependents.add(n)
    out = next(n for n in nodes if n.op == "output")
    if out.args[0] is z_node:
        return None
    g = torch.fx.Graph()
    env = {z_node: g.placeholder("z")}
    for n in after:
        if n not in dependents:
            continue
        for a in n.all_input_nodes:
            if a not in env:
                if a.op == "get_attr":
                    env[a] = g.node_copy(a)
                else:
                    raise NotIncremental(f"{_describe(n, gm)} after the reduction uses a value from "
                                         "before it (the readout must depend on z alone)")
        if n.op == "output":
            g.output(torch.fx.graph.map_arg(n.args[0], lambda a: env[a]))
        else:
            env[n] = g.node_copy(n, lambda a: env[a])
    return torch.fx.GraphModule(gm, g)


def build_tables(plan: HeadPlan, A_i, baseline):
    """The cell game of one image: (tables [cells, 2^size, d], members [cells, size], z_empty [d]),
    on A_i's device, in A_i's dtype (float32 for half models). A_i [C, h, w]; baseline: a number
    or a tensor broadcastable to A_i (per-channel: [C, 1, 1])."""
    dtype = A_i.dtype if A_i.dtype in (torch.float32, torch.float64) else torch.float32
    A_i = A_i.to(dtype)
    B = torch.as_tensor(baseline, dtype=dtype, device=A_i.device).expand_as(A_i)
    X = torch.stack([B, A_i])  # [2, C, h, w]: the removed and the kept value of every position
    if plan.pointwise is not None:
        X = plan.pointwise(X.to(_module_dtype(plan.pointwise, dtype))).to(dtype)
    F0, F1 = X[0], X[1]
    Cp, h, w = F1.shape
    W, b = _affine(plan.linear, dtype)
    if plan.kind == "gap":
        g = X.reshape(2, Cp, h * w).permute(2, 0, 1) / (h * w)  # [hw, 2, C']
        tables = g if W is None else g @ W.T                      # [hw, 2, d]
        members = torch.arange(h * w).reshape(-1, 1)
    elif plan.kind == "flatten":
        if plan.layout is not None:  # the Linear saw the map permuted: undo it on its weight
            sizes = (Cp, h, w)
            axes = [a - 1 for a in plan.layout[1:]]
            Wp = W.reshape((W.shape[0],) + tuple(sizes[a] for a in axes))
            inv = sorted(range(3), key=lambda i: axes[i])
            W = Wp.permute(0, *[1 + i for i in inv]).reshape(W.shape[0], -1)
        Wv = _weights_per_position(W, plan.spatial, Cp, h, w)     # [d, C', hw]
        tables = torch.einsum("dcp,scp->psd", Wv, X.reshape(2, Cp, h * w))
        members = torch.arange(h * w).reshape(-1, 1)
    else:  # max pooling over k x k cells
        k = plan.k
        S = 1 << (k * k)
        yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        local = (yy % k) * k + (xx % k)                           # bit of each position in its cell
        pattern = ((torch.arange(S)[:, None, None] >> local) & 1).bool().to(A_i.device)  # [S, h, w]
        Xs = torch.where(pattern[:, None], F1[None], F0[None])    # [S, C', h, w]
        pooled = F.max_pool2d(Xs, k).reshape(S, Cp, -1)           # [S, C', cells]
        Wv = _weights_per_position(W, plan.spatial, Cp, h // k, w // k)  # [d, C', cells]
        tables = torch.einsum("dkc,skc->csd", Wv, pooled)         # [cells, S, d]
        cy, cx = torch.meshgrid(torch.arange(h // k), torch.arange(w // k), indexing="ij")
        offs = torch.tensor([a * w + c for a in range(k) for c in range(k)])
        members = ((cy * k * w + cx * k).reshape(-1, 1) + offs[None])  # [cells, k*k] position ids
    z_empty = tables[:, 0].sum(0)
    if b is not None:
        z_empty = z_empty + b
    return tables.contiguous(), members.numpy(), z_empty


def _weights_per_position(W, spatial, C, h, w):
    """The Linear's weight seen from an [C, h, w] map through the per-channel linear spatial ops
    (adaptive average pools) between them: [d, C, h*w]. Each op's matrix comes from applying it to
    the h*w basis maps."""
    d = W.shape[0]
    if not spatial:
        return W.reshape(d, C, h * w)
    basis = torch.eye(h * w, dtype=W.dtype, device=W.device).reshape(h * w, 1, h, w)
    for op in spatial:
        basis = op(basis)
    M = basis.reshape(h * w, -1)                                  # [hw, out positions]
    return torch.einsum("dko,po->dkp", W.reshape(d, C, M.shape[1]), M)


def _affine(linear, dtype):
    if linear is None:
        return None, None
    W = linear.weight.to(dtype)
    b = linear.bias.to(dtype) if linear.bias is not None else None
    return W, b


def _module_dtype(module, default):
    p = next(module.parameters(), None)
    return p.dtype if p is not None else default


def differentiable_shapley(tables, members, z_empty, value, perm, antithetic):
    """Shapley estimates of one image's cell game as a torch expression of the tables (and so of
    the model's parameters): the same permutations and the same walk as the engines, written with
    differentiable ops (gather, cumsum, index_add) so a loss on the map can be backpropagated.

    tables [cells, 2^size, d], z_empty [d] (requiring grad as the model's parameters do);
    members [cells, size] (NumPy); value(Z [B, d]) -> [B, m]; perm [P, n] (NumPy, the engines'
    permutations; antithetic: the sampling design, a bool or its group size g, rows gj .. gj+g-1
    forming a sample). Returns (values [n, m], stderr [n, m] (detached; over the samples),
    v_full [m], v_empty [m]).
    """
    import numpy as np

    from .. import reference

    P, n = perm.shape
    cells = tables.shape[0]
    cell_of = np.empty(n, dtype=np.int64)
    rows, cols = np.nonzero(members >= 0)
    cell_of[members[rows, cols]] = rows
    rank = reference.ranks_of(perm.astype(np.int32))
    c = cell_of[perm[:, :-1]]                                        # [P, n-1] cell of each joiner
    mem = members[c]                                                 # [P, n-1, size]
    valid = mem >= 0
    r = np.where(valid, rank[np.arange(P)[:, None, None], np.where(valid, mem, 0)], n)
    t = np.arange(1, n)[None, :, None]
    bits = np.arange(members.shape[1])
    hi = ((r < t) << bits).sum(-1)
    lo = ((r < t - 1) << bits).sum(-1)
    dev = tables.device
    ct, hit, lot = (torch.from_numpy(a).to(dev) for a in (c, hi, lo))
    delta = tables[ct, hit] - tables[ct, lot]                        # [P, n-1, d]
    Z = z_empty + torch.cumsum(delta, 1)                             # z of every prefix
    full = torch.from_numpy(((members >= 0) << bits).sum(-1)).to(dev)
    z_full = z_empty + (tables[torch.arange(cells, device=dev), full] - tables[:, 0]).sum(0)
    ends = value(torch.stack([z_empty, z_full]))                     # [2, m]
    mid = value(Z.reshape(P * (n - 1), -1)).reshape(P, n - 1, -1)     # [P, n-1, m]
    V = torch.cat([ends[0].expand(P, 1, -1), mid, ends[1].expand(P, 1, -1)], 1)  # [P, n+1, m]
    marg = V[:, 1:] - V[:, :-1]                                      # [P, n, m] by position
    idx = torch.from_numpy(perm.astype(np.int64)).to(dev)
    per_player = torch.zeros((P, n, marg.shape[-1]), dtype=marg.dtype, device=dev)
    per_player = per_player.scatter(1, idx[..., None].expand_as(marg), marg)  # [P, n, m] by player
    values = per_player.mean(0)
    with torch.no_grad():
        samples = per_player.detach()
        g = reference.group_of(antithetic)
        if g > 1:
            samples = samples.reshape(P // g, g, n, -1).mean(1)
        S = samples.shape[0]
        stderr = samples.std(0, unbiased=True) / S ** 0.5 if S > 1 else values.detach() * float("nan")
    return values, stderr, ends[1], ends[0]
