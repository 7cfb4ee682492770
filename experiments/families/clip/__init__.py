"""The ``clip`` family: a small CLIP (Radford et al. 2021) trained from scratch on the `shapes`
captions, evaluated by zero-shot attribute accuracy and retrieval.

  python -m experiments.main train --config experiments/configs/clip_shapes.py --workdir DIR
  python -m experiments.main evaluate --workdir DIR
  python -m experiments.main sample --workdir DIR --num 16     # a similarity-matrix PNG
"""
from experiments.families import Family, register
from experiments.families.clip.config import CLIPExperiment
from experiments.families.clip.evaluation import evaluate, sample
from experiments.families.clip.runner import load_trained, train

FAMILY = register(Family(
    name="clip", config_class=CLIPExperiment, train=train, sample=sample, evaluate=evaluate,
    description="contrastive image-text pre-training on the shapes captions (zero-shot)"))

__all__ = ["CLIPExperiment", "FAMILY", "evaluate", "load_trained", "sample", "train"]
