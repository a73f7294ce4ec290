"""``conditioner:open-clip``: captions -> open_clip token ids -> the text tower of an open_clip model.

Token ids. As ``conditioner:small-text`` (and with its helpers): open_clip's
BPE tokenizer, rows of ``context_length`` ids laid out as ``open_clip.tokenize``
does, a longer caption truncated with one warning line per conditioner, and a
null row (every entry :data:`~ntm.conditioning.base.NULL_TOKEN`) for a dropped,
empty or missing caption. ``context_length`` defaults to the model's own (77
for the CLIP configs).

Models. ``model`` names an open_clip config (``open_clip.list_models()``, or
one registered with ``open_clip.add_model_config``) whose text tower is
open_clip's own causal :class:`~open_clip.transformer.TextTransformer` pooled
at the end-of-text token and read with the BPE tokenizer: the CLIP ViT, RN and
ConvNeXt configs, EVA, ViTamin, MobileCLIP-B, PE-Core. Refused in one line
naming ``conditioner.model``: ``hf-hub:`` / ``local-dir:`` names and configs
with a Hugging Face text tower or tokenizer (building those downloads), and
towers that are bidirectional, pool otherwise (SigLIP) or append a class token
(CoCa). Only the text tower is built (the vision tower never is), from the
config alone, so nothing ever reaches the network.

Weights. ``weights`` is a local state-dict file (``torch.save`` of an open_clip
model's ``state_dict()``, optionally under ``"state_dict"`` with ``module.``
prefixes, or ``.safetensors``); the text keys are read (``token_embedding.weight``,
``positional_embedding``, ``transformer.*``, ``ln_final.*``, also under
``text.`` as a custom-text model saves them) and the rest, the vision tower
included, ignored. A key the tower needs that is missing or has another shape
is refused in one line naming it. ``weights=None`` is a random tower from a
fixed seed (reproducible from the config alone): only for tests and ablations.

Encoder. :class:`OpenClipTextEncoder`: ``tokens`` are the final-layer token
features after ``ln_final`` (width of the text transformer), zero after the
end-of-text token, ``mask`` True up to it; ``pooled`` is the end-of-text
token's feature: open_clip's own pooling (``pool_type='argmax'``) *without*
``text_projection``. Why without: the projection is a fixed linear map that the
model's condition Linear composes with anyway, and leaving it off keeps
``pooled`` in the space and width of ``tokens`` (one ``cond_dim``; some configs,
e.g. RN50, project 512 -> 1024). ``pooled @ text_projection`` is
``encode_text`` of the original model. Null rows get a learned ``pooled``
vector and one learned token, as small-text's.

Frozen (the default). The tower's parameters do not require gradients, are in
no parameter group and are not registered as the encoder's submodule: the
checkpoints and the EMA hold only the learned null and a digest of the tower
(:attr:`OpenClipTextEncoder.tower_digest`), and a checkpoint is refused, in
one line, by an encoder whose frozen tower has another digest (the weights file
changed). The tower follows the encoder's device lazily, runs in float32 in
eval mode under ``no_grad`` (autocast off), and its features are kept in an
in-memory LRU per caption (:class:`FeatureCache`: key = the id row up to its
end of text, at most ``cache_size`` captions), shared by the encoders whose
tower has the same identity (model config + sha256 of the weights file's
content, computed once per file) and never by others. With ``frozen=False``
the tower is a submodule trained with the model in the parameter group
``condition_encoder`` (checkpointed and EMA'd; its blocks are FSDP units), and
nothing is cached.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import pydantic
import torch
from torch import Tensor, nn

from ntm.conditioning.base import (
    CONDITIONERS,
    BatchField,
    NULL_TOKEN,
    Conditioner,
    ConditionerConfig,
)
from ntm.conditioning.condition import Condition
from ntm.conditioning.text import VOCAB_SIZE, TokenTextEncoder, tokenize
from ntm.spec import ModelDims
from ntm.registry import ConfigError, did_you_mean

RANDOM_INIT_SEED = 0
"""The seed of the random tower of ``weights=None`` (fixed: the tower is rebuilt, not saved)."""
_noted_random_tower = False


def _error(field: str, message: str) -> ConfigError:
    return ConfigError([(f"conditioner.{field}", message)])


@functools.lru_cache(maxsize=1)
def _open_clip():
    """``open_clip`` (imported on first use: it takes seconds)."""
    import open_clip

    return open_clip


# -- the model config ----------------------------------------------------------------------------
class TowerSpec:
    """What an open_clip model config says about its text tower (checked to be one this conditioner reads)."""

    def __init__(self, name: str, model_cfg: dict[str, Any]) -> None:
        self.name = name
        self.model_cfg = model_cfg
        self.text_cfg: dict[str, Any] = dict(model_cfg.get("text_cfg", {}))
        self.embed_dim = int(model_cfg["embed_dim"])
        self.quick_gelu = bool(model_cfg.get("quick_gelu", False))
        self.width = int(self.text_cfg.get("width", 512))
        self.context_length = int(self.text_cfg.get("context_length", 77))
        self.config_hash = hashlib.sha256(json.dumps(model_cfg, sort_keys=True, default=str).encode()).hexdigest()


def tower_spec(model: str) -> TowerSpec:
    """The open_clip config ``model`` (``ConfigError`` naming ``conditioner.model`` if it is unknown or refused)."""
    if ":" in model:  # hf-hub:org/repo, local-dir:/path
        raise _error("model", f"{model!r} is not an open_clip config name (hf-hub: and local-dir: models are not "
                              "read: they download or bring their own config); name a config of "
                              "open_clip.list_models() and pass a local weights file as conditioner.weights")
    open_clip = _open_clip()
    cfg = open_clip.get_model_config(model)
    if cfg is None:
        raise _error("model", f"unknown open_clip model {model!r}{did_you_mean(model, open_clip.list_models())}; "
                              "the names are open_clip.list_models()")
    text = cfg.get("text_cfg", {})
    if "hf_model_name" in text or "hf_tokenizer_name" in text:
        which = "text tower" if "hf_model_name" in text else "tokenizer"
        raise _error("model", f"open_clip model {model!r} has a Hugging Face {which} "
                              f"({text.get('hf_model_name') or text.get('hf_tokenizer_name')}), which would download; "
                              "use a config with open_clip's own text transformer (e.g. ViT-B-32)")
    problems = []
    if int(text.get("vocab_size", VOCAB_SIZE)) != VOCAB_SIZE:
        problems.append(f"a vocabulary of {text['vocab_size']} (open_clip's BPE tokenizer has {VOCAB_SIZE})")
    if text.get("pool_type", "argmax") != "argmax":
        problems.append(f"pool_type {text['pool_type']!r}")
    if text.get("no_causal_mask"):
        problems.append("a bidirectional text transformer")
    if text.get("embed_cls") or "multimodal_cfg" in cfg:
        problems.append("a class token (CoCa)")
    if problems:
        raise _error("model", f"open_clip model {model!r} has {', '.join(problems)}; conditioner:open-clip reads "
                              "causal text towers pooled at the end-of-text token (argmax), e.g. ViT-B-32")
    return TowerSpec(model, cfg)


# -- weights files -------------------------------------------------------------------------------
_FILE_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """sha256 of the file's content, computed once per (path, size, modification time) in a process."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _FILE_DIGESTS:
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 23), b""):
                digest.update(chunk)
        _FILE_DIGESTS[key] = digest.hexdigest()
    return _FILE_DIGESTS[key]


def weights_path(weights: str) -> Path:
    path = Path(weights).expanduser()
    if not path.is_file():
        raise _error("weights", f"no such file: {weights}" if not path.exists() else f"not a file: {weights}")
    return path


def read_state_dict(path: Path) -> Mapping[str, Tensor]:
    """The tensors of a weights file (memory-mapped where torch can), unwrapped from ``state_dict`` / ``module.``."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # a file in torch's legacy (non-zip) format cannot be memory-mapped
                state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise _error("weights", f"cannot read {path} as a state dict: {reason}") from None
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise _error("weights", f"{path} does not hold a state dict (a mapping of names to tensors)")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_text_tower_weights(tower: nn.Module, path: Path, model: str) -> None:
    """Copy the text tower's tensors from the weights file at ``path`` into ``tower`` (shapes checked first)."""
    state = read_state_dict(path)
    prefix = "text." if "text.token_embedding.weight" in state and "token_embedding.weight" not in state else ""
    wanted = tower.state_dict()
    picked = {}
    for key, like in wanted.items():
        saved = state.get(prefix + key)
        if saved is None:
            raise _error("weights", f"{path} does not fit open_clip model {model!r} (conditioner.model): it has no "
                                    f"{prefix + key!r}")
        if tuple(saved.shape) != tuple(like.shape):
            raise _error("weights", f"{path} does not fit open_clip model {model!r} (conditioner.model): "
                                    f"{prefix + key!r} is {tuple(saved.shape)} in the file, {tuple(like.shape)} "
                                    "in the model")
        picked[key] = saved
    tower.load_state_dict(picked)


def build_text_tower(spec: TowerSpec, weights: str | None) -> tuple[nn.Module, str]:
    """open_clip's text tower for ``spec`` (no vision tower, no text projection) and its identity (a hex digest).

    The identity is sha256 of the model config and of the weights file's content (or of the fixed seed of a
    random tower): two towers with the same identity compute the same features.
    """
    from open_clip.model import _build_text_tower

    global _noted_random_tower
    path = None if weights is None else weights_path(weights)
    if path is None and not _noted_random_tower:
        _noted_random_tower = True
        print(f"ntm: note: conditioner.weights is not set: the open_clip text tower of {spec.name!r} is random "
              "(only useful for tests and ablations)", file=sys.stderr, flush=True)
    if path is None:
        with torch.random.fork_rng(devices=[]):  # the random init neither depends on nor moves the caller's RNG
            torch.manual_seed(RANDOM_INIT_SEED)
            tower = _build_text_tower(spec.embed_dim, spec.text_cfg, quick_gelu=spec.quick_gelu)
    else:  # no random init to overwrite: allocate, then fill from the file
        with torch.device("meta"):
            tower = _build_text_tower(spec.embed_dim, spec.text_cfg, quick_gelu=spec.quick_gelu)
        tower.to_empty(device="cpu")
    tower.text_projection = None  # pooled stays in the tokens' space (see the module docstring)
    # the causal mask is made per call (tower_tokens): a non-persistent buffer would reach the EMA's buffers,
    # which the sampling weights are loaded from, and such a state dict does not load back
    del tower.attn_mask
    if path is not None:
        load_text_tower_weights(tower, path, spec.name)
    source = f"random-init:{RANDOM_INIT_SEED}" if path is None else f"sha256:{file_sha256(path)}"
    identity = hashlib.sha256(f"{spec.config_hash}|{source}".encode()).hexdigest()
    return tower, identity


def tower_tokens(tower: nn.Module, ids: Tensor) -> Tensor:
    """``(B, n)`` ids (``n`` <= the tower's context length) -> ``(B, n, width)`` final features after ``ln_final``.

    What ``encode_text`` computes before pooling, on the first ``n`` positions (the mask is causal, so the
    features up to the end of text do not depend on the padding after it).
    """
    n = ids.shape[1]
    x = tower.token_embedding(ids) + tower.positional_embedding[:n].to(tower.token_embedding.weight.dtype)
    causal = torch.full((n, n), float("-inf"), device=ids.device).triu_(1)  # open_clip's additive mask
    x = tower.transformer(x, attn_mask=causal)
    return tower.ln_final(x)


# -- the feature cache ---------------------------------------------------------------------------
class FeatureCache:
    """An LRU of ``(n, width)`` float32 token features, one entry per caption (key: its id row up to the end
    of text), holding at most ``capacity`` entries; ``hits`` and ``misses`` count the lookups."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.entries: collections.OrderedDict[bytes, Tensor] = collections.OrderedDict()
        self.hits = self.misses = 0

    def get(self, key: bytes) -> Tensor | None:
        value = self.entries.get(key)
        if value is None:
            self.misses += 1
        else:
            self.hits += 1
            self.entries.move_to_end(key)
        return value

    def put(self, key: bytes, value: Tensor) -> None:
        self.entries[key] = value
        self.entries.move_to_end(key)
        while len(self.entries) > self.capacity:
            self.entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self.entries)


MAX_CACHED_TOWERS = 8
"""Tower identities whose caches are kept (the least recently created go first)."""
_CACHES: collections.OrderedDict[str, FeatureCache] = collections.OrderedDict()


def feature_cache(identity: str, capacity: int) -> FeatureCache:
    """The process's cache of the frozen tower ``identity`` (created on first use; its capacity only grows)."""
    cache = _CACHES.get(identity)
    if cache is None:
        cache = _CACHES[identity] = FeatureCache(capacity)
        while len(_CACHES) > MAX_CACHED_TOWERS:
            _CACHES.popitem(last=False)
    cache.capacity = max(cache.capacity, capacity)
    return cache


# -- config and conditioner ----------------------------------------------------------------------
class OpenClipTextConfig(ConditionerConfig):
    model: str = "ViT-B-32"
    """An open_clip model config name (open_clip.list_models()) whose text tower encodes the captions; its own
    causal text transformer and BPE tokenizer only (Hugging Face towers, SigLIP and CoCa are refused)."""
    weights: str | None = None
    """A local weights file of that model (its state_dict, .pt/.bin or .safetensors); only the text tower's
    tensors are read. None: a random tower from a fixed seed, only useful for tests and ablations."""
    frozen: bool = True
    """Keep the tower's weights fixed (no gradients, not checkpointed, features cached per caption); False
    trains the tower with the model in the parameter group condition_encoder."""
    dropout: float = pydantic.Field(0.1, ge=0.0, lt=1.0)
    """Fraction of captions replaced by the null condition (for classifier-free guidance)."""
    context_length: int | None = pydantic.Field(None, ge=3)
    """Token ids per caption (start and end tokens included); longer captions are truncated. None: the model's
    own context length (77 for CLIP); at most that."""
    cache_size: int = pydantic.Field(4096, ge=0)
    """Captions whose token features a frozen tower keeps in memory (an LRU on the tower's device, shared by
    the encoders of the same model and weights); 0: no cache."""

    reads: ClassVar[BatchField] = "caption"

    def spec(self) -> TowerSpec:
        """The model's text tower config (imports open_clip; ``ConfigError`` for a model this cannot read)."""
        spec = tower_spec(self.model)
        if self.context_length is not None and self.context_length > spec.context_length:
            raise _error("context_length", f"{self.context_length} exceeds the context length of open_clip model "
                                           f"{self.model!r} ({spec.context_length})")
        return spec

    def resolved_context_length(self) -> int:
        """``context_length``, or the model's own when it is ``None``."""
        return self.spec().context_length if self.context_length is None else self.context_length

    def build(self) -> OpenClipTextConditioner:
        return OpenClipTextConditioner(self)

    def model_dims(self, num_classes: int) -> dict[str, int]:
        spec = self.spec()
        return {"cond_dim": spec.width,
                "cond_len": spec.context_length if self.context_length is None else self.context_length}

    def encoder(self, dims: ModelDims) -> OpenClipTextEncoder:
        return OpenClipTextEncoder(self)


@CONDITIONERS.register("open-clip", OpenClipTextConfig)
class OpenClipTextConditioner(Conditioner):
    """Captions -> ``(B, context_length)`` open_clip token ids; each caption independently becomes the null row
    with probability ``dropout`` (the mask drawn from ``generator``)."""

    reads: ClassVar[BatchField] = "caption"

    def __init__(self, config: OpenClipTextConfig) -> None:
        self.config = config
        self.context_length = config.resolved_context_length()
        self.warned = False

    def inputs(self, captions: list[str | None] | None, num_classes: int = 0) -> Tensor | None:
        """Token ids without dropout; ``None`` (the model's null condition) for a batch without captions."""
        if captions is None:
            return None
        if isinstance(captions, str):
            raise TypeError("captions must be a list of strings, one per example, not one string")
        ids, longest = tokenize(list(captions), self.context_length)
        if longest and not self.warned:
            self.warned = True
            print(f"ntm: warning: a caption of {longest} tokens was truncated to conditioner.context_length = "
                  f"{self.context_length} (later truncations are not reported)", file=sys.stderr, flush=True)
        return ids

    def __call__(
        self, captions: list[str | None] | None, num_classes: int = 0, generator: torch.Generator | None = None
    ) -> Tensor | None:
        ids = self.inputs(captions, num_classes)
        if ids is None or self.config.dropout == 0:
            return ids
        device = generator.device if generator is not None else torch.device("cpu")
        drop = torch.rand(ids.shape[0], generator=generator, device=device).cpu() < self.config.dropout
        ids[drop] = NULL_TOKEN
        return ids


# -- the encoder ---------------------------------------------------------------------------------
def _digest_tensor(identity: str) -> Tensor:
    return torch.frombuffer(bytearray(bytes.fromhex(identity)), dtype=torch.int64).clone()


class OpenClipTextEncoder(TokenTextEncoder):
    """``(B, L)`` token ids (``L <= context_length``) -> :class:`Condition` with ``context_length`` tokens of
    the text tower's width; null rows get the learned null. See the module docstring for frozen vs trained."""

    def __init__(self, config: OpenClipTextConfig) -> None:
        super().__init__()
        spec = config.spec()
        self.model_name, self.frozen = config.model, config.frozen
        self.weights = config.weights
        self.context_length = spec.context_length if config.context_length is None else config.context_length
        width = spec.width
        tower, self.identity = build_text_tower(spec, config.weights)
        self.null_pooled = nn.Parameter(torch.randn(width) * 0.02)
        self.null_token = nn.Parameter(torch.randn(width) * 0.02)
        self.register_buffer("tower_digest", _digest_tensor(self.identity))  # saved: checked when loading
        if self.frozen:
            tower.requires_grad_(False).eval()
            self.__dict__["_frozen_tower"] = tower  # not a submodule: not in state dicts, the EMA or optimizers
            self.cache = feature_cache(self.identity, config.cache_size) if config.cache_size else None
        else:
            self.tower = tower
            self.cache = None

    # -- the parts ----------------------------------------------------------------------------
    def text_tower(self) -> nn.Module:
        """open_clip's text tower (frozen: moved to the encoder's device on use); run it with :func:`tower_tokens`
        (it has no ``attn_mask`` buffer, so its own ``forward`` does not run)."""
        return self.__dict__["_frozen_tower"] if self.frozen else self.tower

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """``condition_encoder``: the learned null (frozen), or the null and the tower (``frozen=False``)."""
        return {self.param_group: [p for p in self.parameters() if p.requires_grad]}

    def shard_units(self) -> list[nn.Module]:
        return [] if self.frozen else list(self.tower.transformer.resblocks)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        saved = state_dict.get(prefix + "tower_digest")
        if self.frozen and saved is not None and not torch.equal(saved.cpu(), self.tower_digest.cpu()):
            source = "a random init" if self.weights is None else f"conditioner.weights {self.weights}"
            error_msgs.append(f"{prefix}tower_digest: trained with another frozen text tower than {self.model_name!r} "
                              f"with {source} gives now (the weights file changed?)")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    # -- conditions ----------------------------------------------------------------------------
    def forward(self, ids: Tensor) -> Condition:
        ids, null, end, mask = self.read_ids(ids)
        dtype = self.null_pooled.dtype
        if self.frozen:
            h = self._frozen_tokens(ids, end, null).to(dtype)
        else:
            h = tower_tokens(self.tower, ids).to(dtype) * mask[..., None]
        return self.condition(h, null, end, mask)

    @torch.compiler.disable
    def _frozen_tokens(self, ids: Tensor, end: Tensor, null: Tensor) -> Tensor:
        """``(B, context_length, width)`` float32 features of the frozen tower, zero after each end of text (and
        on null rows), from the cache where it has them; the others in one tower call on their distinct rows."""
        device = ids.device
        tower = self.text_tower()
        if tower.token_embedding.weight.device != device:
            tower.to(device)
        ids_cpu, ends, nulls = ids.cpu(), end.tolist(), null.tolist()
        rows: dict[bytes, Tensor | None] = {}
        keys: list[bytes | None] = []
        for i in range(ids.shape[0]):
            if nulls[i]:
                keys.append(None)
                continue
            key = ids_cpu[i, : ends[i] + 1].numpy().tobytes()
            keys.append(key)
            if key not in rows:
                rows[key] = None if self.cache is None else self.cache.get(key)
        todo = [key for key, value in rows.items() if value is None]
        if todo:
            n = max(len(key) for key in todo) // 8  # int64 ids
            batch = torch.zeros(len(todo), n, dtype=torch.long)
            for j, key in enumerate(todo):
                row = torch.frombuffer(bytearray(key), dtype=torch.int64)
                batch[j, : row.numel()] = row
            with torch.no_grad(), torch.autocast(device.type, enabled=False):
                features = tower_tokens(tower, batch.to(device))
            for j, key in enumerate(todo):
                rows[key] = features[j, : len(key) // 8].clone()
                if self.cache is not None:
                    self.cache.put(key, rows[key])
        width = tower.token_embedding.weight.shape[1]
        out = torch.zeros(ids.shape[0], self.context_length, width, device=device)
        present = [i for i, key in enumerate(keys) if key is not None]
        if present:
            padded = nn.utils.rnn.pad_sequence([rows[keys[i]].to(device) for i in present], batch_first=True)
            out[torch.tensor(present, device=device), : padded.shape[1]] = padded
        return out


__all__ = [
    "FeatureCache", "OpenClipTextConditioner", "OpenClipTextConfig", "OpenClipTextEncoder", "TowerSpec",
    "build_text_tower", "feature_cache", "file_sha256", "load_text_tower_weights", "tower_spec", "tower_tokens",
]
