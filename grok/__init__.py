"""grok: a Hydra-configured harness for grokking research (see README.md).

In a notebook:
- `grok.load_run(path, epoch=None)`: a run read back: its config, data and split, model at a
  checkpoint, metrics and progress measures by column, summary (grok/load.py);
- `grok.load_sweep(path)`: every run of a sweep and its table;
- `grok.to_hooked_transformer(model)`: the model as a TransformerLens HookedTransformer
  (grok/models/lens.py; the `interp` extra);
- `grok.generate(model, "226+336=")`: a sequence-task problem answered by greedy decoding
  (grok/data/sequences.py).
They are imported on first use, so that `import grok.config` stays light.
"""

_LAZY = {
    "load_run": "grok.load",
    "load_sweep": "grok.load",
    "to_hooked_transformer": "grok.models.lens",
    "generate": "grok.data.sequences",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'grok' has no attribute {name!r}")
