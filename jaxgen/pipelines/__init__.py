"""Text-to-image and image-to-image pipelines: tokenizer + text encoder + sampler + decoder."""
from jaxgen.pipelines.stable_diffusion import (COMPONENTS, StableDiffusionPipeline,
                                               decode_latents, encode_prompts, guided_sample,
                                               img2img, load_stable_diffusion, tokenize,
                                               txt2img)

__all__ = ["COMPONENTS", "StableDiffusionPipeline", "decode_latents", "encode_prompts",
           "guided_sample", "img2img", "load_stable_diffusion", "tokenize", "txt2img"]
