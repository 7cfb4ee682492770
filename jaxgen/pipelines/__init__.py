"""Text-to-image and image-to-image pipelines: tokenizer + text encoder + sampler + decoder."""
from jaxgen.pipelines.stable_diffusion import (COMPONENTS, StableDiffusionPipeline,
                                               encode_prompts, img2img, load_stable_diffusion,
                                               tokenize, txt2img)

__all__ = ["COMPONENTS", "StableDiffusionPipeline", "encode_prompts", "img2img",
           "load_stable_diffusion", "tokenize", "txt2img"]
