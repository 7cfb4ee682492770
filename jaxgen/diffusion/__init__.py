"""Denoising diffusion as pure functions of a schedule pytree (DDPM, DDIM, DPM-Solver++, PLMS),
and schedulers built from diffusers configs (:mod:`jaxgen.diffusion.schedulers`)."""
from jaxgen.diffusion.dpm_solver import (SOLVER_TYPES, dpmpp_2m_sample, dpmpp_2m_step,
                                         dpmpp_2m_update)
from jaxgen.diffusion.guidance import (cfg, cfg_negative, cfg_negative_replace, check_labels,
                                       classifier_grad, classifier_guidance,
                                       classifier_mean_shift, guidance_combine,
                                       log_prob_from_logits, rescale_guidance)
from jaxgen.diffusion.losses import (diffusion_loss, discretized_gaussian_log_likelihood,
                                     example_keys, loss_target, normal_kl, prior_bpd,
                                     sample_t_and_noise, variational_bound_bpd, vb_terms_bpd)
from jaxgen.diffusion.process import (PREDICTION_TYPES, alpha_bar_at, convert_output,
                                      eps_from_x0, predict_x0_eps, q_mean_variance,
                                      q_posterior_mean_variance, q_sample, v_from_x0_eps,
                                      x0_from_eps)
from jaxgen.diffusion.plms import plms_sample, plms_table, pndm_transfer
from jaxgen.diffusion.sampler import METHODS, ddim_invert, sample
from jaxgen.diffusion.schedules import (SCHEDULE_KINDS, Schedule, make_schedule,
                                        rescale_betas_zero_terminal_snr, respace_schedule,
                                        schedule_from_betas)
from jaxgen.diffusion.schedulers import (SUPPORTED_SCHEDULERS, SchedulerConfig,
                                         load_scheduler_config, scheduler_sample)
from jaxgen.diffusion.steps import VARIANCE_TYPES, ddim_inverse_step, ddim_step, ddpm_step
from jaxgen.diffusion.timesteps import (PAD, SPACINGS, dpm_solver_timesteps, pad_table,
                                        previous_timesteps, timesteps)
