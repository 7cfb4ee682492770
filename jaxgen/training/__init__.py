"""Training: TrainState with EMA, optimizers, train-step factories, checkpointing."""
from jaxgen.training.checkpoint import (CheckpointError, make_manager, restore_arrays,
                                        restore_latest, save)
from jaxgen.training.loop import (LoopResult, MetricsLog, NonFiniteLossError, Terminate,
                                  Terminated,
                                  all_finite, sigterm_blocked, train_loop,
                                  versions, write_run_json)
from jaxgen.training.classifier_step import make_classifier_train_step, noisy_classifier_loss_fn
from jaxgen.training.optim import make_optimizer
from jaxgen.training.state import TrainState, ema_decay_at, ema_update
from jaxgen.training.step import (accumulate_gradients, diffusion_loss_fn, make_step_from_loss,
                                  make_train_step)
