"""GAN losses, alternating train steps, latent-space tools, inversion, latent directions and
the measurements of an edit along one, and text-driven editing with CLIP (StyleCLIP).

Models live in `jaxgen.nn` (`DCGANGenerator`, `DCGANDiscriminator`, `StyleGenerator`,
`StyleDiscriminator`); everything here is a pure function or a factory of one.
"""
from jaxgen.gan.directions import (VoynovState, attribute_index, attribute_logodds,
                                   attribute_score, conditional_direction, edit_latents,
                                   fit_linear_classifier, init_voynov, layer_mask,
                                   layerwise_ws, make_voynov_step, normalize_directions,
                                   projection_std, select_confident, supervised_direction)
from jaxgen.gan.edit_metrics import (class_flips, monotonic_and_flips_fraction,
                                     monotonic_columns, monotonic_fraction, rises_and_flips,
                                     rises_where_unsaturated)
from jaxgen.gan.latent import (group_mask, group_mean, interpolate, latent_arithmetic,
                               latents_from_seeds, lerp, parse_seeds, slerp, truncate)
from jaxgen.gan.losses import (LOSSES, d_loss_hinge, d_loss_logistic, g_loss_hinge,
                               g_loss_minimax, g_loss_nonsaturating, get_losses, path_lengths,
                               r1_penalty)
from jaxgen.gan.projector import (ProjectionResult, classifier_feature_fn, make_projector,
                                  noise_regularization, projector_learning_rate,
                                  projector_w_noise_scale, w_statistics)
from jaxgen.gan.style_space import (style_codes, style_dim, style_layout, style_statistics,
                                    synthesis_from_styles)
from jaxgen.gan.styleclip import (LatentOptimizationResult, TextToImageResult,
                                  apply_global_direction, channel_image_directions,
                                  channel_relevance, check_strength, clip_distance,
                                  clip_edit_loss, global_direction, make_latent_optimizer,
                                  make_latent_optimizer_steps, make_text_to_image,
                                  mean_text_features, resize_for_clip,
                                  text_direction)
from jaxgen.gan.steps import (GANState, apply_model, generator_z_dim, make_d_step, make_g_step,
                              make_gan_step, make_pl_step)

__all__ = [
    # directions: supervised (InterFaceGAN) and unsupervised (Voynov & Babenko)
    "VoynovState", "attribute_index", "attribute_logodds", "attribute_score",
    "conditional_direction", "edit_latents", "fit_linear_classifier", "init_voynov",
    "layer_mask", "layerwise_ws", "make_voynov_step", "normalize_directions", "projection_std",
    "select_confident", "supervised_direction",
    # measurements of an edit ([M, B] classifier outputs along m)
    "class_flips", "monotonic_and_flips_fraction", "monotonic_columns", "monotonic_fraction",
    "rises_and_flips", "rises_where_unsaturated",
    # latent tools
    "group_mask", "group_mean", "interpolate", "latent_arithmetic", "latents_from_seeds", "lerp",
    "parse_seeds", "slerp", "truncate",
    # losses
    "LOSSES", "d_loss_hinge", "d_loss_logistic", "g_loss_hinge", "g_loss_minimax",
    "g_loss_nonsaturating", "get_losses", "path_lengths", "r1_penalty",
    # inversion
    "ProjectionResult", "classifier_feature_fn", "make_projector", "noise_regularization",
    "projector_learning_rate", "projector_w_noise_scale", "w_statistics",
    # style space S of a style-based generator
    "style_codes", "style_dim", "style_layout", "style_statistics", "synthesis_from_styles",
    # text-driven editing and generation with CLIP (StyleCLIP)
    "LatentOptimizationResult", "TextToImageResult", "apply_global_direction",
    "channel_image_directions", "channel_relevance", "check_strength", "clip_distance",
    "clip_edit_loss", "global_direction", "make_latent_optimizer",
    "make_latent_optimizer_steps", "make_text_to_image",
    "mean_text_features", "resize_for_clip", "text_direction",
    # train steps
    "GANState", "apply_model", "generator_z_dim", "make_d_step", "make_g_step", "make_gan_step",
    "make_pl_step",
]
