"""Shared neural-network layers."""

from ntm.nn.attention import Attention, CrossAttention, KVCache
from ntm.nn.embeddings import ConditionEmbedding, LabelEmbedding, TimeEmbedding, sinusoidal
from ntm.nn.layers import MLP, AdaLNBlock, FinalLayer, modulate
from ntm.nn.tokens import TokenLayout, patchify, unpatchify

__all__ = [
    "MLP", "AdaLNBlock", "Attention", "ConditionEmbedding", "CrossAttention", "FinalLayer", "KVCache", "LabelEmbedding",
    "TimeEmbedding", "TokenLayout", "modulate", "patchify", "sinusoidal", "unpatchify",
]
