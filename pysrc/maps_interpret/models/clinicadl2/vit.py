"""ClinicaDL 2.0's `ViT` and its named variants (torchvision's ViT re-laid out by 2.0): conv_proj (patches),
class_token, encoder (pos_embedding, dropout, layers of pre-norm attention + MLP blocks, norm), fc (out,
output_act). Plain torch modules with 2.0's names: the attention is torch's own MultiheadAttention, the MLP
block torchvision's layout (Linear, GELU, Dropout, Linear, Dropout: keys mlp.0 and mlp.3) without importing
torchvision."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from .fields import ConfigError, Fields, per_dim

# name -> (patch_size, embedding_dim, mlp_dim, num_heads, num_layers) on (3, 224, 224) images, as 2.0's variants.
VARIANTS = {
    "ViTB16": (16, 768, 3072, 12, 12),
    "ViTB32": (32, 768, 3072, 12, 12),
    "ViTL16": (16, 1024, 4096, 16, 24),
    "ViTL32": (32, 1024, 4096, 16, 24),
}
_EPS = 1e-6  # torchvision's (and 2.0's) LayerNorm eps in ViT


class EncoderBlock(nn.Module):
    def __init__(self, num_heads: int, dim: int, mlp_dim: int, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=_EPS)
        self.self_attention = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(dim, eps=_EPS)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(mlp_dim, dim),
                                 nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)
        y, _ = self.self_attention(y, y, y, need_weights=False)
        y = self.dropout(y)
        y += x  # 2.0 adds the residual in place onto the attention output
        return y + self.mlp(self.norm2(y))


class Encoder(nn.Module):
    def __init__(self, seq_length: int, num_layers: int, num_heads: int, dim: int, mlp_dim: int, dropout: float,
                 pos_embedding: nn.Parameter):
        super().__init__()
        self.pos_embedding = pos_embedding
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList([EncoderBlock(num_heads, dim, mlp_dim, dropout) for _ in range(num_layers)])
        self.norm = nn.LayerNorm(dim, eps=_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(x + self.pos_embedding)
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)


class ViT(nn.Module):
    """Patches -> tokens (class token first) -> encoder -> the class token's features -> fc."""

    def __init__(self, in_shape: list[int], patch_size: tuple[int, ...], num_outputs: int, embedding_dim: int,
                 num_layers: int, num_heads: int, mlp_dim: int, pos_embed_type, output_act, dropout: float):
        super().__init__()
        from monai.networks.layers.utils import get_act_layer

        in_channels, *size = in_shape
        dims = len(size)
        conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
        self.conv_proj = conv(in_channels, embedding_dim, kernel_size=patch_size, stride=patch_size)
        self.class_token = nn.Parameter(torch.zeros(1, 1, embedding_dim))
        grid = [s // p for s, p in zip(size, patch_size)]
        seq_length = 1
        for g in grid:
            seq_length *= g
        seq_length += 1  # the class token
        if pos_embed_type == "sincos":
            from monai.networks.blocks.pos_embed_utils import build_sincos_position_embedding

            # Fixed, but a Parameter in 2.0 (so in its state_dict); a zero embedding for the class token first.
            table = build_sincos_position_embedding(grid, embedding_dim, dims)
            pos = nn.Parameter(torch.cat([torch.zeros(1, 1, embedding_dim), table.data], dim=1), requires_grad=False)
        elif pos_embed_type is None:  # none: a frozen zero Parameter in 2.0
            pos = nn.Parameter(torch.zeros(1, seq_length, embedding_dim), requires_grad=False)
        else:  # learnable
            pos = nn.Parameter(torch.empty(1, seq_length, embedding_dim))
        self.encoder = Encoder(seq_length, num_layers, num_heads, embedding_dim, mlp_dim, dropout, pos)
        self.fc = nn.Sequential(OrderedDict([("out", nn.Linear(embedding_dim, num_outputs))]))
        if output_act is not None:
            self.fc.add_module("output_act", get_act_layer(output_act))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_proj(x).flatten(2).transpose(-1, -2)  # (n, dim, *grid) -> (n, tokens, dim)
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.fc(self.encoder(x)[:, 0])


def build_vit(config: dict) -> ViT:
    fields = Fields(config)
    in_shape = fields.positive_ints("in_shape")
    if not 2 <= len(in_shape) <= 4:
        raise ConfigError(f"in_shape must be [channels, *1 to 3 spatial sizes], got {in_shape}")
    dims = len(in_shape) - 1
    patch = per_dim(fields.get("patch_size"), dims, "patch_size")
    if any(p < 1 or s % p for s, p in zip(in_shape[1:], patch)):
        raise ConfigError(f"the image size {in_shape[1:]} must be divisible by patch_size {list(patch)}")
    options = dict(
        num_outputs=fields.positive_int("num_outputs"), embedding_dim=fields.positive_int("embedding_dim", 768),
        num_layers=fields.positive_int("num_layers", 12), num_heads=fields.positive_int("num_heads", 12),
        mlp_dim=fields.positive_int("mlp_dim", 3072), pos_embed_type=fields.get("pos_embed_type", "learnable"),
        output_act=fields.activation("output_act", "tanh"), dropout=fields.dropout() or 0.0)
    fields.done()
    embedding, heads, pos = options["embedding_dim"], options["num_heads"], options["pos_embed_type"]
    if embedding % heads:
        raise ConfigError(f"embedding_dim={embedding} must be divisible by num_heads={heads}")
    if pos not in ("learnable", "sincos", None):
        raise ConfigError(f"pos_embed_type must be 'learnable', 'sincos' or null, got {pos!r}")
    if pos == "sincos" and (dims == 1 or embedding % (2 * dims)):
        raise ConfigError(f"sincos position embedding needs a 2D or 3D image and embedding_dim divisible by "
                          f"{2 * dims}, got {dims}D and {embedding}")
    return ViT(in_shape, patch, **options)


def build_variant(config: dict) -> ViT:
    """ViT-B/16..L/32 on (3, 224, 224) images, learnable position embedding, no dropout; `pretrained` only
    chose the initial weights, replaced by model.pt's."""
    fields = Fields(config)
    patch, embedding, mlp, heads, layers = VARIANTS[fields.config.get("name_")]
    num_outputs = fields.positive_int("num_outputs")
    output_act = fields.activation("output_act", None)
    fields.get("pretrained", False)  # initial weights only: not the architecture
    fields.done()
    return ViT([3, 224, 224], (patch, patch), num_outputs, embedding, layers, heads, mlp, "learnable", output_act,
               0.0)
