"""Flax linen modules (architecture only)."""
from jaxgen.nn.init import init_from_shapes, module_param_shapes
from jaxgen.nn.layers import (AttentionBlock, DownBlock, Downsample2D, GroupNorm, MidBlock,
                              ResnetBlock2D, TimestepEmbedding, UpBlock, Upsample2D,
                              timestep_embedding, upsample_nearest2x)
from jaxgen.nn.unet import (UNet2D, UNetConfig, UnsupportedOptionError, count_params, init_unet,
                            param_shapes)

__all__ = [
    "init_from_shapes", "module_param_shapes",
    "AttentionBlock", "DownBlock", "Downsample2D", "GroupNorm", "MidBlock", "UpBlock",
    "ResnetBlock2D", "TimestepEmbedding", "Upsample2D", "timestep_embedding",
    "upsample_nearest2x", "UNet2D", "UNetConfig", "UnsupportedOptionError", "count_params",
    "init_unet", "param_shapes",
]

from jaxgen.nn.autoencoder import Autoencoder, AutoencoderConfig, Decoder, Encoder, init_autoencoder
from jaxgen.nn.discriminator import (PatchDiscriminator, PatchDiscriminatorConfig,
                                     init_discriminator)

__all__ += ["Autoencoder", "AutoencoderConfig", "Decoder", "Encoder", "init_autoencoder",
            "PatchDiscriminator", "PatchDiscriminatorConfig", "init_discriminator"]

from jaxgen.nn.gan import DCGANDiscriminator, DCGANGenerator, DirectionReconstructor
from jaxgen.nn.stylegan import StyleDiscriminator, StyleGANConfig, StyleGenerator

__all__ += ["DCGANDiscriminator", "DCGANGenerator", "DirectionReconstructor",
            "StyleDiscriminator", "StyleGANConfig", "StyleGenerator"]

from jaxgen.nn.clip import (CLIP_MEAN, CLIP_STD, CLIPConfig, CLIPModel, CLIPTextConfig,
                            CLIPTextModel, CLIPTextTransformer, CLIPVisionConfig,
                            CLIPVisionTransformer, clip_preprocess, pool_text_features)

__all__ += ["CLIP_MEAN", "CLIP_STD", "CLIPConfig", "CLIPModel", "CLIPTextConfig", "CLIPTextModel",
            "CLIPTextTransformer", "CLIPVisionConfig", "CLIPVisionTransformer", "clip_preprocess",
            "pool_text_features"]

from jaxgen.nn.autoencoder_kl import AutoencoderKL, AutoencoderKLConfig, init_autoencoder_kl
from jaxgen.nn.unet_condition import (UNet2DConditionConfig, UNet2DConditionModel,
                                      init_unet_condition)

__all__ += ["AutoencoderKL", "AutoencoderKLConfig", "init_autoencoder_kl",
            "UNet2DConditionConfig", "UNet2DConditionModel", "init_unet_condition"]
