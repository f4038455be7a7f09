"""An example task plug-in (README "Extending"): a binary operation of your own, outside grok/.

Selected by conf/task/xor.yaml (`_target_: my_tasks.xor`); the label function gets the operands as
int64 tensors, the task's config node and data_seed, and returns the labels in 0 .. p-1.
"""

from grok.data.tasks import BinaryOperation

xor = BinaryOperation(lambda a, b, cfg, data_seed: (a ^ b) % cfg.p)
