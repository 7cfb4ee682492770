"""jaxgen: the path from GANs to Stable Diffusion as pure, transformable JAX functions."""
from jaxgen.batching import map_batched

__version__ = "0.1.0"
__all__ = ["map_batched"]
