"""CLIP's training objectives (the models live in `jaxgen.nn`)."""
from jaxgen.clip.losses import MAX_LOGIT_SCALE, clip_logits, clip_loss, normalize, siglip_loss

__all__ = ["MAX_LOGIT_SCALE", "clip_logits", "clip_loss", "normalize", "siglip_loss"]
