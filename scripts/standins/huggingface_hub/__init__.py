# stand-in for the huggingface_hub package (not installable here): only names diffusers imports at module level
import sys, types
class _Any:
    def __init__(self, *a, **k): pass
    def __call__(self, *a, **k): return (a[0] if a and callable(a[0]) else _Any())
    def __getattr__(self, n): return _Any()
class _Err(Exception): pass
def _get(name):
    if name.endswith("Error"): return _Err
    if name.isupper(): return "/tmp/hf-stub"
    if name == "__version__": return "0.21.4"
    return _Any()
class _Mod(types.ModuleType):
    def __getattr__(self, n):
        if n.startswith("__") and n != "__version__": raise AttributeError(n)
        return _get(n)
class _Finder:
    def find_module(self, name, path=None):
        return self if name.startswith("huggingface_hub.") else None
    def load_module(self, name):
        m = _Mod(name); m.__path__ = []; sys.modules[name] = m; return m
sys.meta_path.insert(0, _Finder())
def __getattr__(n): return _get(n)
__version__ = "0.21.4"
