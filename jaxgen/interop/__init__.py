"""Weight import/export from reference formats (safetensors, diffusers layouts); never pickle."""
from jaxgen.interop.diffusers_unet2d import (flax_path_to_diffusers_key, load_diffusers_unet2d,
                                             params_to_state_dict, save_diffusers_unet2d,
                                             state_dict_to_params)

__all__ = ["flax_path_to_diffusers_key", "load_diffusers_unet2d", "params_to_state_dict",
           "save_diffusers_unet2d", "state_dict_to_params"]

from jaxgen.interop.clip import (clip_config_from_dict, clip_config_to_dict,
                                 clip_params_to_state_dict, clip_state_dict_to_params,
                                 load_clip_model, load_clip_text_model, save_clip_model)

__all__ += ["clip_config_from_dict", "clip_config_to_dict", "clip_params_to_state_dict",
            "clip_state_dict_to_params", "load_clip_model", "load_clip_text_model",
            "save_clip_model"]

from jaxgen.interop.diffusers_autoencoder_kl import (load_diffusers_autoencoder_kl,
                                                     save_diffusers_autoencoder_kl)
from jaxgen.interop.diffusers_unet2d_condition import (load_diffusers_unet2d_condition,
                                                       save_diffusers_unet2d_condition)

__all__ += ["load_diffusers_autoencoder_kl", "save_diffusers_autoencoder_kl",
            "load_diffusers_unet2d_condition", "save_diffusers_unet2d_condition"]
