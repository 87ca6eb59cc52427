"""Kinds, FLOPs and bytes of the top-level ops of a compiled XLA program, from its HLO text."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
               "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16,
               "f8e4m3fn": 1, "f8e5m2": 1}
_ARRAY = re.compile(r"\b([a-z]\w*)\[([\d,]*)\]")
_HEAD = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*")
_CALLS = re.compile(r"\b(?:calls|to_apply|condition|body|true_computation|false_computation)"
                    r"=(%?[\w.\-]+)|\b(?:calls|branch_computations|called_computations)"
                    r"=\{([^}]*)\}")


@dataclass
class Instruction:
    name: str
    shape: str  # the result's shape text: "f32[8,32]{1,0}" or a tuple "(f32[2]{0}, ...)"
    opcode: str
    operands: list[str]
    attrs: str  # everything after the operand list
    computation: str

    @property
    def calls(self) -> list[str]:
        """Every computation the instruction names: a fusion's or call's (`calls=`,
        `to_apply=`), a while's condition and body, a conditional's branches
        (`branch_computations={...}`, `true_computation=`, `false_computation=`)."""
        return [name for m in _CALLS.finditer(self.attrs)
                for name in re.findall(r"%?([\w.\-]+)", m.group(1) or m.group(2))]

    @property
    def trip_count(self) -> int | None:
        """How many times a while runs its body, where XLA states it (its backend config's
        `"known_trip_count":{"n":"4"}`); None where it does not."""
        m = re.search(r'"known_trip_count":\{"n":"(\d+)"\}', self.attrs)
        return int(m.group(1)) if m else None

    @property
    def op_name(self) -> str:
        m = re.search(r'op_name="([^"]*)"', self.attrs)
        return m.group(1) if m else ""


@dataclass
class Module:
    name: str
    entry: str
    computations: dict[str, list[Instruction]] = field(default_factory=dict)
    shapes: dict[str, str] = field(default_factory=dict)  # instruction -> result shape text


def _balanced(text: str, start: int) -> int:
    """Index just past the bracket group opening at text[start]."""
    pairs = {"(": ")", "{": "}", "[": "]"}
    stack = []
    for i in range(start, len(text)):
        c = text[i]
        if c in pairs:
            stack.append(pairs[c])
        elif stack and c == stack[-1]:
            stack.pop()
            if not stack:
                return i + 1
    return len(text)


def _split_operands(text: str) -> list[str]:
    """'f32[2]{0} %a, %b' -> ['a', 'b'] (operand names, with or without printed shapes)."""
    return [m.group(1) for m in re.finditer(r"%([\w.\-]+)", text)]


def parse(hlo: str) -> Module:
    """The computations of a compiled module's `as_text()`, metadata kept."""
    first = hlo.splitlines()[0] if hlo else ""
    m = re.match(r"HloModule ([\w.\-]+)", first)
    module = Module(name=m.group(1) if m else "", entry="")
    current = None
    for line in hlo.splitlines():
        if not line.startswith(" ") and line.rstrip().endswith("{"):
            head = re.match(r"(ENTRY\s+)?%?([\w.\-]+)", line)
            if head:
                current = head.group(2)
                module.computations[current] = []
                if head.group(1):
                    module.entry = current
            continue
        if current is None:
            continue
        h = _HEAD.match(line)
        if not h:
            continue
        pos = h.end()
        if line[pos] == "(":
            end = _balanced(line, pos)
        else:
            end = pos
            while end < len(line) and line[end] != " ":
                end = _balanced(line, end) if line[end] in "{[" else end + 1
        shape = line[pos:end]
        rest = line[end:].lstrip()
        op = re.match(r"([\w\-]+)\(", rest)
        if not op:
            continue
        close = _balanced(rest, op.end() - 1)
        inst = Instruction(h.group(1), shape, op.group(1),
                           _split_operands(rest[op.end():close - 1]), rest[close:], current)
        module.computations[current].append(inst)
        module.shapes[inst.name] = shape
    return module


def dims(shape: str) -> list[tuple[str, tuple[int, ...]]]:
    """Every array in a shape text: [(dtype, dims), ...] (a tuple gives several)."""
    return [(t, tuple(int(d) for d in ds.split(",") if d)) for t, ds in _ARRAY.findall(shape)
            if t in DTYPE_BYTES]


def nbytes(shape: str) -> int:
    return sum(DTYPE_BYTES[t] * math.prod(d) for t, d in dims(shape))


def _called(module: Module, inst: Instruction, seen: set) -> list[Instruction]:
    """The instructions of the computations `inst` calls, nested ones included."""
    out = []
    for c in inst.calls:
        if c in seen or c not in module.computations:
            continue
        seen.add(c)
        for i in module.computations[c]:
            out.append(i)
            out.extend(_called(module, i, seen))
    return out


def _body(module: Module, inst: Instruction) -> list[Instruction]:
    """The instructions an op runs: those of the computations it calls (a fusion's), or
    itself."""
    return _called(module, inst, set()) or [inst]


def _conv_flops(module: Module, inst: Instruction) -> float:
    """2 x (forward output elements) x (kernel elements per output feature): the multiply-adds
    of a convolution as written (zeros of lhs dilation included). A cuDNN backward call keeps
    the forward convolution's dim_labels: its forward output is the input-gradient's first
    operand (dY), and the filter-gradient's result is the kernel."""
    labels = re.search(r"dim_labels=\w+_(\w+)->\w+", inst.attrs)
    if not labels or len(inst.operands) < 2:
        return 0.0
    shape = [module.shapes.get(o, "") for o in inst.operands[:2]]
    target = re.search(r'custom_call_target="([^"]+)"', inst.attrs)
    role = CUDNN_ROLES.get(target.group(1)) if target else None
    out, kernel = {"input-gradient": (shape[0], shape[1]),
                   "weight-gradient": (shape[1], inst.shape)}.get(role, (inst.shape, shape[1]))
    out, kernel = dims(out), dims(kernel)
    if not out or not kernel:
        return 0.0
    o = kernel[0][1][labels.group(1).index("o")]
    return 2.0 * math.prod(out[0][1]) * math.prod(kernel[0][1]) / o


def _lhs_dims(inst: Instruction, kind: str) -> list[int] | None:
    """A dot's left operand's `kind` ("contracting" or "batch") dimensions, from the HLO
    (`lhs_contracting_dims={1}`) or a cuBLAS call's backend config
    (`"lhs_contracting_dimensions":["1"]`); None where the instruction names none."""
    m = (re.search(rf"lhs_{kind}_dims=\{{([\d,]*)\}}", inst.attrs)
         or re.search(rf'"lhs_{kind}_dimensions":\[([\d",]*)\]', inst.attrs))
    return [int(d) for d in m.group(1).replace('"', "").split(",") if d] if m else None


def _dot_flops(module: Module, inst: Instruction) -> float:
    """2 x output elements x contracted size, for a dot or a cuBLAS call (whose contracting
    dimensions are in its backend config)."""
    out = dims(inst.shape)
    lhs = dims(module.shapes.get(inst.operands[0], "")) if inst.operands else []
    contracted = _lhs_dims(inst, "contracting")
    if not out or not lhs or contracted is None:
        return 0.0
    return 2.0 * math.prod(out[0][1]) * math.prod(lhs[0][1][d] for d in contracted)


CUDNN_ROLES = {"__cudnn$convForward": "forward", "__cudnn$convBiasActivationForward": "forward",
               "__cudnn$convBackwardInput": "input-gradient",
               "__cudnn$convBackwardFilter": "weight-gradient"}
MOVES = {"parameter", "constant", "bitcast", "reshape", "transpose", "copy", "broadcast",
         "slice", "concatenate", "tuple", "get-tuple-element", "pad", "dynamic-slice",
         "dynamic-update-slice", "iota", "reverse", "copy-start", "copy-done"}
NOT_TIMED = {"parameter", "constant", "tuple", "get-tuple-element", "bitcast"}


def _sorted_dims(shape: str) -> tuple[int, ...] | None:
    arrays = dims(shape)
    return tuple(sorted(d for d in arrays[0][1] if d != 1)) if arrays else None


def _sorted_dims_past_batch(inst: Instruction) -> tuple[int, ...] | None:
    """A dot's result without its batch dimensions (they come first), sorted non-1 dims: a
    split-K matmul (XLA:GPU splits a long contraction into a batch of partial products that a
    reduction then sums) returns [splits, M, N], a weight gradient's kernel shape behind the
    split."""
    batch = _lhs_dims(inst, "batch")
    arrays = dims(inst.shape)
    if batch is None or not arrays:
        return None
    return tuple(sorted(d for d in arrays[0][1][len(batch):] if d != 1))


def _role(module: Module, inst: Instruction, top: Instruction, kernel_shapes: set) -> str:
    """forward / input-gradient / weight-gradient of a convolution or a dot. A cuDNN call
    names it. Otherwise: the forward pass and the input gradient take a kernel (or its
    transpose) as an operand and return an activation; the weight gradient takes two
    activations and returns a kernel-shaped array, also behind a split-K batch dimension
    (when shapes alone are ambiguous, a kernel-shaped result decides). Forward and input
    gradient differ in their metadata (the op's own or its fusion's): the backward pass is
    'transpose(jvp(...))'."""
    target = re.search(r'custom_call_target="([^"]+)"', inst.attrs)
    if target and target.group(1) in CUDNN_ROLES:
        return CUDNN_ROLES[target.group(1)]
    kernel_in = any(_sorted_dims(module.shapes.get(o, "")) in kernel_shapes
                    for o in inst.operands)
    kernel_out = (_sorted_dims(inst.shape) in kernel_shapes
                  or _sorted_dims_past_batch(inst) in kernel_shapes)
    if kernel_out and not kernel_in or kernel_out == kernel_in and kernel_out:
        return "weight-gradient"
    op_name = inst.op_name or top.op_name
    return "input-gradient" if "transpose(" in op_name else "forward"


def runs(module: Module) -> dict[str, int | None]:
    """Computation -> how many times one run of the program runs it: the entry once, a called
    computation as often as its caller, a while's body its trip count times over and its
    condition once more, where XLA states the trip count; None where that is not known (a
    while whose trip count XLA does not state, a conditional's branch, and what they call)."""
    out: dict[str, int | None] = {}

    def visit(comp: str, n: int | None) -> None:
        if comp not in module.computations:
            return
        out[comp] = None if n is None or out.get(comp, 0) is None else out.get(comp, 0) + n
        for inst in module.computations[comp]:
            if inst.opcode == "call":
                called = [(c, n) for c in inst.calls]
            elif inst.opcode == "while":
                trips = None if n is None or inst.trip_count is None else n * inst.trip_count
                body = re.search(r"\bbody=%?([\w.\-]+)", inst.attrs)
                cond = re.search(r"\bcondition=%?([\w.\-]+)", inst.attrs)
                called = ([(body.group(1), trips)] if body else []) + (
                    [(cond.group(1), None if trips is None else trips + n)] if cond else [])
            elif inst.opcode == "conditional":
                called = [(c, None) for c in inst.calls]
            else:
                continue
            for c, k in called:
                visit(c, k)

    visit(module.entry, 1)
    return out


def classify(module: Module, kernel_shapes: set) -> dict[str, dict]:
    """Top-level op name -> {"kind", "flops", "bytes", "runs"} for every op of the entry
    computation and of the computations it calls through while/call/conditional,
    `kernel_shapes` being the sorted non-1 dims of the model's convolution kernels. "runs" is
    how many times one run of the program runs the op (`runs`), and "flops" and "bytes" are
    over all of them; where that is not known (None: in a while whose trip count XLA does not
    state, in a conditional's branch), they are one run's."""
    ops = {}
    for comp, times in runs(module).items():
        for inst in module.computations[comp]:
            if inst.opcode in ("while", "call", "conditional"):
                continue
            if inst.opcode in NOT_TIMED:
                continue
            body = _body(module, inst)
            opcodes = {i.opcode for i in body}
            convs = [i for i in body if i.opcode == "convolution" or re.search(
                r'custom_call_target="__cudnn\$conv', i.attrs)]
            dots = [i for i in body if i.opcode == "dot" or re.search(
                r'custom_call_target="__cublas', i.attrs)]
            flops = 0.0
            if convs:
                kind = f"conv {_role(module, convs[0], inst, kernel_shapes)}"
                flops = sum(_conv_flops(module, i) for i in convs)
            elif dots:
                role = _role(module, dots[0], inst, kernel_shapes)
                kind = f"matmul (1x1 conv) {role}"
                flops = sum(_dot_flops(module, i) for i in dots)
            elif opcodes & {"reduce", "reduce-window", "select-and-scatter"}:
                kind = "reduction (BatchNorm statistics, bias gradients, pooling)"
            elif opcodes & {"all-reduce", "all-reduce-start", "all-reduce-done", "all-gather",
                            "reduce-scatter", "collective-permute", "all-to-all"}:
                kind = "collective (gradient and BatchNorm means across devices)"
            elif opcodes <= MOVES:
                kind = "transpose / copy"
            elif inst.opcode == "custom-call":
                kind = "other custom call"
            else:
                kind = "elementwise fusion"
            moved = nbytes(inst.shape) + sum(nbytes(module.shapes.get(o, ""))
                                             for o in inst.operands)
            per_program = 1 if times is None else times
            ops[inst.name] = {"kind": kind, "flops": flops * per_program,
                              "bytes": moved * per_program, "runs": times}
    return ops
