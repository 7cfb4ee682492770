"""Autoencoder family (AE, VAE, beta-VAE, CVAE, VQ-VAE, VQGAN): losses, vector quantiser,
perceptual distance, latent tools and train steps (pure functions; modules in jaxgen.nn)."""
from jaxgen.vae.latent import (decode, decode_indices, encode, encode_indices,
                               latent_scaling_factor, lerp, sample_codes_uniform, sample_prior,
                               slerp)
from jaxgen.vae.losses import (LIKELIHOODS, adaptive_weight, bernoulli_nll, bits_per_dim,
                               check_beta, gaussian_kl, gaussian_nll, hinge_d_loss, hinge_g_loss,
                               kl_weight, likelihood_mean, negative_elbo, negative_log_likelihood,
                               reconstruction_error, reparameterize, split_moments)
from jaxgen.vae.perceptual import (PerceptualNet, VGG16Features, classifier_feature_net,
                                   load_vgg16_lpips, perceptual_distance)
from jaxgen.vae.quantizer import (CodebookState, Quantized, code_counts, codebook_metrics,
                                  ema_update, init_codebook, nearest_code, quantize,
                                  restart_dead_codes, track_usage, vq_loss)
from jaxgen.vae.steps import (VQGANState, VQTrainState, autoencoder_loss_fn,
                              make_autoencoder_step, make_vq_step, make_vqgan_steps)

__all__ = [
    "decode", "decode_indices", "encode", "encode_indices", "latent_scaling_factor", "lerp",
    "sample_codes_uniform", "sample_prior", "slerp", "LIKELIHOODS", "adaptive_weight",
    "bernoulli_nll", "bits_per_dim", "check_beta", "gaussian_kl", "gaussian_nll",
    "hinge_d_loss", "hinge_g_loss", "kl_weight", "likelihood_mean", "negative_elbo",
    "negative_log_likelihood", "reconstruction_error", "reparameterize", "split_moments",
    "PerceptualNet", "VGG16Features", "classifier_feature_net", "load_vgg16_lpips",
    "perceptual_distance", "CodebookState", "Quantized", "code_counts", "codebook_metrics",
    "ema_update", "init_codebook", "nearest_code", "quantize", "restart_dead_codes",
    "track_usage", "vq_loss", "VQGANState", "VQTrainState", "autoencoder_loss_fn",
    "make_autoencoder_step", "make_vq_step", "make_vqgan_steps",
]
