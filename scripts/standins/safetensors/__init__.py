# stand-in for the safetensors package (its Rust core is not installable here): plain-Python file I/O
from . import torch
from .torch import safe_open  # imported by name at module level by diffusers' loaders; never called on these paths
