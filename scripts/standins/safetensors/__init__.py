# stand-in for the safetensors package (its Rust core is not installable here): plain-Python file I/O
from . import torch
