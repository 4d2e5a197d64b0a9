# Stand-in for the transformers package (not installable here), for diffusers' StableDiffusionPipeline module imports
# only. Every name is an empty class: no model code runs through it. The pipeline fixture scripts pass the text
# encoder's outputs as prompt_embeds (as the published tiny-pipeline fixture did) and construct the pipeline with
# text_encoder=None and tokenizer=None.
import sys
import types

import torch

__version__ = "4.39.0.dev0"


class PreTrainedModel(torch.nn.Module):
    config_class = None
    main_input_name = "input_ids"
    _no_split_modules = []

    def __init__(self, config=None, *args, **kwargs):
        super().__init__()
        self.config = config


class PretrainedConfig:
    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)


class _Placeholder:
    def __init__(self, *args, **kwargs):
        raise RuntimeError("transformers stand-in: this class has no implementation here")

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        raise RuntimeError("transformers stand-in: from_pretrained is not available")


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return _dummy(name)


def _dummy(name):
    if name.endswith("Config"):
        return type(name, (PretrainedConfig,), {})
    if "Model" in name:
        return type(name, (PreTrainedModel,), {})
    return type(name, (_Placeholder,), {})


class _Submodule(types.ModuleType):
    """transformers.utils, transformers.models.clip.modeling_clip, …: names on demand, as above."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        if name == "logging":
            import logging
            return logging
        if name.startswith("is_"):
            return lambda *a, **k: False
        return _dummy(name)


class _Finder:
    def find_spec(self, name, path=None, target=None):
        if not name.startswith("transformers."):
            return None
        import importlib.machinery
        return importlib.machinery.ModuleSpec(name, self, is_package=True)

    def create_module(self, spec):
        m = _Submodule(spec.name)
        m.__path__ = []
        return m

    def exec_module(self, module):
        pass


sys.meta_path.insert(0, _Finder())
