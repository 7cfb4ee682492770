"""The DDPM family's runner entry points."""
from experiments.evaluate import evaluate
from experiments.sample import sample
from experiments.train import train

__all__ = ["train", "sample", "evaluate"]
