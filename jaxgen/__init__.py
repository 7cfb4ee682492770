"""jaxgen: the path from GANs to Stable Diffusion as pure, transformable JAX functions."""

__version__ = "0.1.0"
