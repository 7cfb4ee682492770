"""jaxgen: generative models from GANs to Stable Diffusion as pure JAX functions."""
from setuptools import find_packages, setup

setup(
    name="jaxgen",
    version="0.1.0",
    description="GANs, autoencoders, DDPM/DDIM diffusion and guidance as pure, "
    "transformable JAX/Flax functions.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["jaxgen", "jaxgen.*", "experiments", "experiments.*"]),
    package_data={"jaxgen.pipelines": ["configs/*/*/*.json"]},
    install_requires=[
        "jax>=0.7",
        "flax>=0.10",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11",
        "tensorflow-datasets>=4.9.7",
        "array-record>=0.7",
        "grain>=0.2.18",  # jaxgen.data.GrainLoader
        "chex>=0.1.88",
        "numpy>=1.26",
        "pillow>=10",
        "scikit-learn>=1.4",  # the embedded `digits` dataset
        "tqdm>=4.66",
        "safetensors>=0.4",  # weight import, never pickle
        "tokenizers>=0.20",  # CLIP's byte-level BPE (jaxgen.text)
        "tensorboardX>=2.6",  # event files without TensorFlow
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-xdist>=3.5", "nbformat>=5.9", "nbclient>=0.10",
                 "ipykernel>=6.29"],
        "reference": ["torch==2.13.0", "diffusers==0.42.1", "scipy>=1.11", "transformers>=5"],
        "tf": ["tensorflow>=2.16"],
        "notebooks": ["jupyter", "matplotlib>=3.8", "nbformat>=5.9", "nbclient>=0.10", "ipykernel>=6.29"],
    },
)
