"""Recognise a LoRA's layout from its tensor names and shapes: format, modules, ranks, components."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from math import prod

from gate.errors import IntakeError, Refusal
from gate.intake.header import FLOAT_DTYPES, Header, TensorInfo

# kohya sd-scripts and LyCORIS name modules with underscores under a prefix naming the component.
KOHYA_PREFIXES = {
    "lora_unet_": "unet",
    "lora_te_": "text_encoder",
    "lora_te1_": "text_encoder",
    "lora_te2_": "text_encoder_2",
    "lora_te3_": "text_encoder_3",
    "lora_transformer_": "transformer",  # OneTrainer's Flux and SD3 LoRAs
    "lycoris_": "unet",
    "oft_unet_": "unet",  # kohya sd-scripts' OFT
}
_KOHYA_ROLES = {
    "lora_down.weight": "down", "lora_up.weight": "up", "lora_mid.weight": "mid", "alpha": "alpha",
    "dora_scale": "dora_scale",
    "hada_w1_a": "w1_a", "hada_w1_b": "w1_b", "hada_w2_a": "w2_a", "hada_w2_b": "w2_b",
    "hada_t1": "t1", "hada_t2": "t2",
    "lokr_w1": "w1", "lokr_w1_a": "w1_a", "lokr_w1_b": "w1_b",
    "lokr_w2": "w2", "lokr_w2_a": "w2_a", "lokr_w2_b": "w2_b", "lokr_t2": "t2",
    # OFT (kohya, LyCORIS diag-OFT and BOFT): a block-diagonal rotation of the layer's output.
    "oft_blocks": "oft_blocks", "oft_diag": "oft_blocks", "rescale": "rescale",
    # LyCORIS "full": the weight difference itself; GLoRA: two low-rank pairs.
    "diff": "diff", "diff_b": "diff_b",
    "a1.weight": "a1", "a2.weight": "a2", "b1.weight": "b1", "b2.weight": "b2",
}
# The kind of adapter a kohya-named role belongs to, where it is not a plain LoRA's.
_ROLE_KINDS = {"oft_blocks": "oft", "rescale": "oft", "diff": "full", "diff_b": "full",
               "a1": "glora", "a2": "glora", "b1": "glora", "b2": "glora"}
_LYCORIS_KINDS = ("loha", "lokr", "oft", "full", "glora")
# diffusers/peft name modules by their dotted path; the first segment usually names the component.
_PEFT_ROLES = {
    "lora_A.weight": "down", "lora_B.weight": "up", "lora_A.bias": "down_bias", "lora_B.bias": "up_bias",
    "lora_magnitude_vector": "dora_scale", "lora_magnitude_vector.weight": "dora_scale", "alpha": "alpha",
}
_LEGACY_ROLES = {"lora.down.weight": "down", "lora.up.weight": "up", "lora.alpha": "alpha"}
# ComfyUI's LoraSave writes dotted module paths with kohya's suffixes ("diffusion_model.<path>.lora_up.weight").
_DOTTED_KOHYA_ROLES = {"lora_down.weight": "down", "lora_up.weight": "up", "lora_mid.weight": "mid",
                       "dora_scale": "dora_scale"}
# diffusers <0.21 attention processors: "<attention>.processor.to_k_lora.down.weight".
_PROCESSOR_RE = re.compile(
    r"^(?P<module>.+)\.processor\.(?P<proj>to_(?:q|k|v|out))_lora\.(?P<role>down|up)\.weight$"
)
# XLabs' Flux LoRAs: "double_blocks.0.processor.qkv_lora1.down.weight", "single_blocks.3.processor.proj_lora.up…".
_XLABS_RE = re.compile(
    r"^(?P<module>(?:double|single)_blocks\.\d+)\.processor\.(?P<proj>(?:qkv|proj)_lora\d?)\.(?P<role>down|up)\.weight$"
)
# peft's raw state_dict() keeps the adapter's name: "<module>.lora_A.default.weight" (but "weight" and "bias"
# in that place are the plain layout's own suffixes, not an adapter's name).
NAMED_ADAPTER_RE = re.compile(
    r"^(?P<module>.+)\.(?P<role>lora_A|lora_B|lora_magnitude_vector)"
    r"\.(?P<adapter>(?!(?:weight|bias)$)[A-Za-z0-9_-]+)(?:\.weight)?$"
)
_NAMED_ADAPTER_ROLES = {"lora_A": "down", "lora_B": "up", "lora_magnitude_vector": "dora_scale"}
# kohya sd-scripts' bundled textual-inversion embeddings: "bundle_emb.<token>.string_to_param.*" (one text
# encoder) or ".clip_l" / ".clip_g" (SDXL). The token is what a prompt types to call the embedding.
# A token is one word (a prompt types it whole); anything else under "bundle_emb." is refused.
BUNDLE_RE = re.compile(r"^bundle_emb\.(?P<token>[\w<>-]{1,64})\.(?P<part>string_to_param\.\*|clip_l|clip_g)$")
_COMPONENTS = ("unet", "text_encoder_2", "text_encoder_3", "text_encoder", "transformer", "prior")
_EXTRA_PREFIXES = ("base_model.model.", "diffusion_model.", "model.diffusion_model.")

# Every role a module of each kind may carry; a module mixing kinds' roles is refused.
ALLOWED = {
    "lora": {"down", "up", "mid", "alpha", "dora_scale", "down_bias", "up_bias"},
    "loha": {"w1_a", "w1_b", "w2_a", "w2_b", "t1", "t2", "alpha", "dora_scale"},
    "lokr": {"w1", "w1_a", "w1_b", "w2", "w2_a", "w2_b", "t2", "alpha", "dora_scale"},
    "oft": {"oft_blocks", "rescale", "alpha"},
    "full": {"diff", "diff_b", "alpha"},
    "glora": {"a1", "a2", "b1", "b2", "alpha"},
}
REQUIRED = {
    "lora": ({"down", "up"},),
    "loha": ({"w1_a", "w1_b", "w2_a", "w2_b"},),
    "lokr": ({"w1", "w2"}, {"w1_a", "w1_b", "w2"}, {"w1", "w2_a", "w2_b"}, {"w1_a", "w1_b", "w2_a", "w2_b"}),
    "oft": ({"oft_blocks"},),
    "full": ({"diff"},),
    "glora": ({"a1", "a2", "b1", "b2"},),
}


@dataclass
class Module:
    """One adapted layer: its weights by role, and the shape of the change it makes."""

    name: str  # normalised: component-relative path with '_' for '.'
    component: str
    kind: str  # lora, loha, lokr, oft, full, glora
    format: str  # kohya, diffusers, diffusers_legacy, comfyui, xlabs, loha, lokr, oft, full, glora
    tensors: dict[str, TensorInfo] = field(default_factory=dict)
    rank: int | None = None
    in_features: int | None = None
    out_features: int | None = None


@dataclass(frozen=True)
class Layout:
    """What the file is as a LoRA."""

    format: str
    formats: dict[str, int]
    modules: tuple[Module, ...]
    rank: int | None
    ranks: dict[int, int]
    components: dict[str, int]
    dora: bool
    extra_tensors: tuple[str, ...]
    embeddings: tuple[str, ...] = ()  # tokens of bundled textual-inversion embeddings

    def find(self, *fragments: str) -> list[Module]:
        """Modules whose normalised name contains every fragment."""
        return [m for m in self.modules if all(f in m.name for f in fragments)]


def _split_kohya(name: str) -> tuple[str, str, str] | None:
    for prefix, component in KOHYA_PREFIXES.items():
        if name.startswith(prefix):
            module, _, suffix = name[len(prefix):].partition(".")
            role = _KOHYA_ROLES.get(suffix)
            if role and module:
                return component, module, role
    return None


_UNET_MARKERS = ("down_blocks", "up_blocks", "mid_block", "input_blocks", "output_blocks", "middle_block")


def _component_path(path: str) -> tuple[str, str]:
    """Split a dotted module path into (component, normalised module name)."""
    for prefix in _EXTRA_PREFIXES:
        if path.startswith(prefix):
            path = path[len(prefix):]
            break
    head, _, rest = path.partition(".")
    if head in _COMPONENTS and rest:
        return head, rest.replace(".", "_")
    return component_of(path), path.replace(".", "_")


def component_of(path: str) -> str:
    """The component a module path without a component prefix belongs to, read off the path itself."""
    if "text_model" in path:
        return "text_encoder"
    if any(marker in path for marker in _UNET_MARKERS):
        return "unet"
    return "transformer"


def _classify(name: str) -> tuple[str, str, str, str] | None:
    """(format, component, module, role) for a LoRA tensor name, or None for anything else."""
    kohya = _split_kohya(name)
    if kohya:
        fmt = "loha" if ".hada_" in name else "lokr" if ".lokr_" in name else _ROLE_KINDS.get(kohya[2], "kohya")
        return (fmt, *kohya)
    xlabs = _XLABS_RE.match(name)
    if xlabs:
        return ("xlabs", "transformer", f"{xlabs['module']}.{xlabs['proj']}".replace(".", "_"), xlabs["role"])
    processor = _PROCESSOR_RE.match(name)
    if processor:
        return ("diffusers_legacy", *_component_path(f"{processor['module']}.{processor['proj']}"),
                processor["role"])
    for fmt, roles in (("diffusers_legacy", _LEGACY_ROLES), ("comfyui", _DOTTED_KOHYA_ROLES),
                       ("diffusers", _PEFT_ROLES)):
        for suffix, role in roles.items():
            if name.endswith("." + suffix):
                return (fmt, *_component_path(name[: -len(suffix) - 1]), role)
    named = NAMED_ADAPTER_RE.match(name)
    if named:
        return ("diffusers", *_component_path(named["module"]), _NAMED_ADAPTER_ROLES[named["role"]])
    return None


def read_layout(header: Header) -> Layout:
    """Group tensors into modules and check that each module is complete and consistent."""
    modules: dict[tuple[str, str], Module] = {}
    extra: list[TensorInfo] = []
    for tensor in header.tensors:
        if tensor.name.startswith("bundle_emb."):  # an embedding, never read as a LoRA module
            _check_embedding(tensor)
            extra.append(tensor)
            continue
        found = _classify(tensor.name)
        if found is None:
            extra.append(tensor)
            continue
        fmt, component, name, role = found
        kind = fmt if fmt in _LYCORIS_KINDS else "lora"
        module = modules.setdefault((component, name), Module(name, component, kind, fmt))
        if kind != "lora":  # LyCORIS modules also carry alpha/dora_scale, named like kohya's
            module.kind, module.format = kind, fmt
        module.tensors[role] = tensor
    # A dotted name ending in ".alpha" alone is not evidence of a LoRA; kohya's prefix is.
    for key, module in list(modules.items()):
        if module.format != "kohya" and set(module.tensors) <= {"alpha", "dora_scale"}:
            extra.extend(modules.pop(key).tensors.values())

    lora_bytes = sum(t.nbytes for m in modules.values() for t in m.tensors.values())
    extra_bytes = sum(t.nbytes for t in extra)
    if not modules:
        sample = ", ".join(repr(t.name) for t in header.tensors[:3])
        raise IntakeError(
            Refusal.NOT_A_LORA,
            f"no LoRA tensors (kohya lora_down/lora_up, diffusers lora_A/lora_B, LyCORIS hada_/lokr_/oft_/diff); "
            f"found names like {sample}",
        )
    if extra_bytes > lora_bytes:
        raise IntakeError(
            Refusal.NOT_A_LORA,
            f"{len(extra)} tensors ({extra_bytes} bytes) are not LoRA weights, more than the LoRA part "
            f"({lora_bytes} bytes): this looks like a full checkpoint",
        )
    for tensor in extra:  # tolerated extras (textual-inversion bundles, …) are weights too, never raw bytes
        if tensor.dtype not in FLOAT_DTYPES:
            raise IntakeError(
                Refusal.LORA_DTYPE_INVALID,
                f"tensor {tensor.name[:80]!r} is {tensor.dtype}: a LoRA file holds floating-point weights only",
            )
    for module in modules.values():
        _check_module(module)

    ordered = tuple(modules.values())
    ranks = Counter(m.rank for m in ordered if m.rank is not None)
    formats = Counter(m.format for m in ordered)
    components = Counter(m.component for m in ordered)
    return Layout(
        format=formats.most_common(1)[0][0],
        formats=dict(formats),
        modules=ordered,
        rank=ranks.most_common(1)[0][0] if ranks else None,
        ranks=dict(sorted(ranks.items())),
        components=dict(components),
        dora=any("dora_scale" in m.tensors for m in ordered),
        extra_tensors=tuple(t.name for t in extra),
        embeddings=tuple(dict.fromkeys(m["token"] for t in extra if (m := BUNDLE_RE.match(t.name)))),
    )


def _check_embedding(tensor: TensorInfo) -> None:
    found = BUNDLE_RE.match(tensor.name)
    if not found or found["token"].isdigit():
        raise IntakeError(
            Refusal.EMBEDDING_INVALID,
            f"{tensor.name[:100]!r}: a bundled embedding is 'bundle_emb.<token>.string_to_param.*' (or .clip_l, "
            ".clip_g) with a one-word token of letters, digits, '_', '-', '<', '>'",
        )
    if len(tensor.shape) not in (1, 2) or 0 in tensor.shape:
        raise IntakeError(Refusal.EMBEDDING_INVALID,
                          f"{tensor.name[:100]!r} has shape {list(tensor.shape)}; expected [width] or [vectors, width]")


def _refuse_shape(module: Module, what: str) -> None:
    raise IntakeError(Refusal.LORA_SHAPE_INVALID, f"module {module.component}.{module.name}: {what}")


def _check_module(module: Module) -> None:
    roles = set(module.tensors)
    if roles - ALLOWED[module.kind]:
        _refuse_shape(module, f"mixes adapter kinds: {', '.join(sorted(roles - ALLOWED[module.kind]))} in a "
                              f"{module.kind} module")
    if not any(required <= roles for required in REQUIRED[module.kind]):
        missing = sorted(min(REQUIRED[module.kind], key=lambda r: len(r - roles)) - roles)
        raise IntakeError(
            Refusal.LORA_PAIR_INCOMPLETE,
            f"module {module.component}.{module.name} ({module.format}) lacks {', '.join(missing)}",
        )
    for role, tensor in module.tensors.items():
        if tensor.dtype not in FLOAT_DTYPES:
            raise IntakeError(
                Refusal.LORA_DTYPE_INVALID,
                f"{tensor.name} is {tensor.dtype}; LoRA weights must be floating point",
            )
        if role == "alpha" and prod(tensor.shape) != 1:
            _refuse_shape(module, f"alpha must be a scalar, not {list(tensor.shape)}")
    {"lora": _check_lora, "loha": _check_loha, "lokr": _check_lokr, "oft": _check_oft, "full": _check_full,
     "glora": _check_glora}[module.kind](module)


def _matrix(module: Module, role: str) -> tuple[int, ...]:
    shape = module.tensors[role].shape
    if len(shape) not in (2, 3, 4) or 0 in shape:
        _refuse_shape(module, f"{role} has shape {list(shape)}; expected a non-empty 2-D or conv weight")
    return shape


def _check_lora(module: Module) -> None:
    down, up = _matrix(module, "down"), _matrix(module, "up")
    rank = down[0]
    if up[1] != rank:
        raise IntakeError(
            Refusal.RANK_MISMATCH,
            f"module {module.component}.{module.name}: down has rank {rank} but up expects {up[1]}",
        )
    if "mid" in module.tensors:
        mid = _matrix(module, "mid")
        if mid[0] != rank or mid[1] != rank:
            raise IntakeError(
                Refusal.RANK_MISMATCH,
                f"module {module.component}.{module.name}: mid is {list(mid)} for rank {rank}",
            )
    module.rank, module.in_features, module.out_features = rank, prod(down[1:]), up[0]


def _check_pair(module: Module, a: str, b: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    left, right = _matrix(module, a), _matrix(module, b)
    if left[1] != right[0]:
        raise IntakeError(
            Refusal.RANK_MISMATCH,
            f"module {module.component}.{module.name}: {a} {list(left)} does not chain with {b} {list(right)}",
        )
    return left, right


def _check_tucker(module: Module, core: str, a: str, b: str) -> tuple[int, int, int]:
    """LyCORIS Tucker factors: core [r, r, k, k], a [r, out], b [r, in]; returns (rank, out, in)."""
    t, left, right = _matrix(module, core), _matrix(module, a), _matrix(module, b)
    rank = t[0]
    if t[1] != rank or left[0] != rank or right[0] != rank:
        raise IntakeError(
            Refusal.RANK_MISMATCH,
            f"module {module.component}.{module.name}: Tucker factors {list(t)}, {list(left)}, {list(right)} "
            "disagree on rank",
        )
    return rank, left[1], right[1] * prod(t[2:])


def _check_loha(module: Module) -> None:
    factors = []
    for index, core in (("1", "t1"), ("2", "t2")):
        if core in module.tensors:
            factors.append(_check_tucker(module, core, f"w{index}_a", f"w{index}_b"))
        else:
            left, right = _check_pair(module, f"w{index}_a", f"w{index}_b")
            factors.append((right[0], left[0], prod(right[1:])))
    (rank, out1, in1), (_, out2, in2) = factors
    if (out1, in1) != (out2, in2):
        _refuse_shape(module, f"the two Hadamard factors have different shapes {(out1, in1)} and {(out2, in2)}")
    module.rank, module.out_features, module.in_features = rank, out1, in1


def _lokr_factor(module: Module, index: str) -> tuple[int, int]:
    if f"w{index}" in module.tensors:
        shape = _matrix(module, f"w{index}")
        return shape[0], prod(shape[1:])
    if index == "2" and "t2" in module.tensors:
        rank, out, fan_in = _check_tucker(module, "t2", "w2_a", "w2_b")
        module.rank = module.rank or rank
        return out, fan_in
    left, right = _check_pair(module, f"w{index}_a", f"w{index}_b")
    if module.rank is None:
        module.rank = right[0]
    return left[0], prod(right[1:])


def _check_lokr(module: Module) -> None:
    out1, in1 = _lokr_factor(module, "1")
    out2, in2 = _lokr_factor(module, "2")
    module.out_features, module.in_features = out1 * out2, in1 * in2



def _check_oft(module: Module) -> None:
    """OFT blocks: [blocks, size, size] (kohya, diag-OFT) or [factors, blocks, size, size] (BOFT), square."""
    shape = module.tensors["oft_blocks"].shape
    if len(shape) not in (2, 3, 4) or 0 in shape or shape[-1] != shape[-2]:
        _refuse_shape(module, f"oft_blocks has shape {list(shape)}; expected square blocks [.., n, size, size]")
    blocks = shape[-3] if len(shape) >= 3 else 1
    module.out_features = blocks * shape[-1]


def _check_full(module: Module) -> None:
    """LyCORIS full: the weight difference [out, in(, k, k)] and, optionally, a bias difference [out]."""
    diff = _matrix(module, "diff")
    if "diff_b" in module.tensors and list(module.tensors["diff_b"].shape) != [diff[0]]:
        _refuse_shape(module, f"diff_b has shape {list(module.tensors['diff_b'].shape)} for {diff[0]} outputs")
    module.out_features, module.in_features = diff[0], prod(diff[1:])


def _check_glora(module: Module) -> None:
    """LyCORIS GLoRA, W + W·A + B: A = a2·a1 [in, in] and B = b2·b1 [out, in], each through the rank."""
    for first, second in (("a1", "a2"), ("b1", "b2")):
        down, up = _matrix(module, first), _matrix(module, second)
        if prod(up[1:]) != down[0]:
            raise IntakeError(
                Refusal.RANK_MISMATCH,
                f"module {module.component}.{module.name}: {first} {list(down)} does not chain with "
                f"{second} {list(up)}",
            )
    b1, b2 = module.tensors["b1"].shape, module.tensors["b2"].shape
    module.rank, module.in_features, module.out_features = b1[0], prod(b1[1:]), b2[0]
