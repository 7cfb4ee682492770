"""Evaluation: Fréchet distance, classifier features ("classifier FID"), image metrics."""
from jaxgen.metrics.classifier import (
    Classifier,
    ClassifierBundle,
    ClassifierConfig,
    classifier_accuracy,
    classifier_features,
    classifier_fid,
    classifier_predict,
    load_classifier,
    save_classifier,
    train_classifier,
)
from jaxgen.metrics.fid import feature_statistics, frechet_distance, frechet_distance_jax
from jaxgen.metrics.image import make_grid, mse, psnr, save_image_grid, to_uint8

__all__ = [
    "Classifier", "ClassifierBundle", "ClassifierConfig", "classifier_accuracy",
    "classifier_features", "classifier_fid", "classifier_predict", "load_classifier",
    "save_classifier", "train_classifier", "feature_statistics", "frechet_distance",
    "frechet_distance_jax", "make_grid", "mse", "psnr", "save_image_grid", "to_uint8",
]

from jaxgen.metrics.clip_score import clip_score

__all__ += ["clip_score"]
