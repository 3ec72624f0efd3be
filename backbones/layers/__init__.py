"""Pieces shared by every backbone family (timm's ``layers`` idea): write each once."""

from backbones.layers.attention import Attention
from backbones.layers.contract import DiffusionBackbone
from backbones.layers.embed import LabelEmbedder, PatchEmbed, TimestepEmbedder, sincos_pos_embed_2d, timestep_embedding
from backbones.layers.guidance import classifier_free_guidance
from backbones.layers.head import FinalLayer, modulate, unpatchify
from backbones.layers.linear_attention import LinearAttention
from backbones.layers.token import TokenBackbone

__all__ = [
    "Attention",
    "DiffusionBackbone",
    "FinalLayer",
    "LabelEmbedder",
    "LinearAttention",
    "PatchEmbed",
    "TimestepEmbedder",
    "TokenBackbone",
    "classifier_free_guidance",
    "modulate",
    "sincos_pos_embed_2d",
    "timestep_embedding",
    "unpatchify",
]
