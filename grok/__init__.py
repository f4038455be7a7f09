"""grok: a Hydra-configured harness for grokking research (see README.md).

`grok.generate(model, "226+336=")` answers a sequence-task problem by greedy decoding
(grok/data/sequences.py); it is imported on first use so that `import grok.config` stays light.
"""


def __getattr__(name: str):
    if name == "generate":
        from grok.data.sequences import generate

        return generate
    raise AttributeError(f"module 'grok' has no attribute {name!r}")
