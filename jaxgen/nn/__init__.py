"""Flax linen modules (architecture only)."""
from jaxgen.nn.layers import (AttentionBlock, Downsample2D, ResnetBlock2D, TimestepEmbedding,
                              Upsample2D, timestep_embedding, upsample_nearest2x)
from jaxgen.nn.unet import (UNet2D, UNetConfig, UnsupportedOptionError, count_params, init_unet,
                            param_shapes)

__all__ = [
    "AttentionBlock", "Downsample2D", "ResnetBlock2D", "TimestepEmbedding", "Upsample2D",
    "timestep_embedding", "upsample_nearest2x", "UNet2D", "UNetConfig", "UnsupportedOptionError",
    "count_params", "init_unet", "param_shapes",
]
