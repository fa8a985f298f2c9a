"""A plain ``torch.nn`` vision transformer for the sparsity example at scale.

Pre-norm encoder blocks (multi-head self-attention through
``scaled_dot_product_attention``, GELU MLP), a class token, learned position
embeddings and a patch embedding by a strided ``Conv2d``; every projection is
an ``nn.Linear``, so `lsqdiff.examples._pruning.prunable_weights` finds them.
"""

from __future__ import annotations

from typing import Any

#: ViT-B's width (768, 12 heads, MLP 3072) at 7 blocks: 49.6M parameters with patch 2.
VIT_50M = dict(dim=768, depth=7, heads=12, mlp=3072)


def vit(*, image: int = 8, patch: int = 2, channels: int = 1, classes: int = 10,
        dim: int = 768, depth: int = 7, heads: int = 12, mlp: int = 3072) -> Any:
    """A vision transformer classifier for ``(N, channels, image, image)`` inputs.

    Examples
    --------
    >>> import torch
    >>> model = vit(dim=32, depth=2, heads=4, mlp=64)
    >>> model(torch.zeros(3, 1, 8, 8)).shape
    torch.Size([3, 10])
    >>> round(sum(p.numel() for p in vit().parameters()) / 1e6, 1)
    49.6
    """
    import torch
    from torch import nn

    if image % patch:
        raise ValueError(f"patch must divide image, got image={image}, patch={patch}")
    if dim % heads:
        raise ValueError(f"heads must divide dim, got dim={dim}, heads={heads}")

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
            self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
            self.fc1, self.fc2 = nn.Linear(dim, mlp), nn.Linear(mlp, dim)

        def forward(self, x: Any) -> Any:
            n, t, _ = x.shape
            q, k, v = self.qkv(self.norm1(x)).view(n, t, 3, heads, dim // heads).unbind(2)
            a = nn.functional.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
            x = x + self.proj(a.transpose(1, 2).reshape(n, t, dim))
            return x + self.fc2(nn.functional.gelu(self.fc1(self.norm2(x))))

    class ViT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            tokens = (image // patch) ** 2
            self.embed = nn.Conv2d(channels, dim, patch, stride=patch)
            self.cls = nn.Parameter(torch.zeros(1, 1, dim))
            self.pos = nn.Parameter(0.02 * torch.randn(1, tokens + 1, dim))
            self.blocks = nn.Sequential(*[Block() for _ in range(depth)])
            self.norm = nn.LayerNorm(dim)
            self.head = nn.Linear(dim, classes)

        def forward(self, x: Any) -> Any:
            x = self.embed(x).flatten(2).transpose(1, 2)
            x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
            return self.head(self.norm(self.blocks(x))[:, 0])

    return ViT()
