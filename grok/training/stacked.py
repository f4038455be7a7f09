"""K runs of one shape as one model: the K = K case of grok/training/loop.py's loop.

Runs whose models have the same shapes (architecture, vocabulary, classes, input length) and the
same loss can share a stack: each parameter is one tensor with a leading run dimension, and
torch.vmap runs the model (through fast(model, tables), grok/models/tables.py) over it: one forward and
one backward for the K runs. Each run's own parameters are views into the stack, so its own
optimizer updates them in place and its checkpoint is an ordinary one.

Runs of one stack may have splits of different sizes (train_frac): each run's examples are padded
to the largest with the label IGNORE, which losses and accuracies leave out.
"""

from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

import torch
from torch import Tensor

from grok.data import IGNORE
from grok.models import fast
from grok.training.metrics import measured, split_metrics
from grok.training.optimizers import step_together

if TYPE_CHECKING:  # the loop builds stacks of its experiments
    from grok.training.experiment import Experiment


def _padded(splits: List[Tensor], fill: int) -> Tensor:
    """(K, N, ...) from K tensors of N_k <= N rows, the missing rows `fill`."""
    n = max(len(split) for split in splits)
    out = splits[0].new_full((len(splits), n, *splits[0].shape[1:]), fill)
    for k, split in enumerate(splits):
        out[k, : len(split)] = split
    return out


class Stack:
    """The runs' parameters stacked along a leading run dimension, each run's parameters views into
    them; their train and test examples padded to common lengths."""

    def __init__(self, experiments: List["Experiment"]):
        self.experiments = experiments
        self.train = self._examples([e.train for e in experiments])
        self.test = self._examples([e.test for e in experiments])
        # any run's, its tables with rows for every run's (token, position) pairs, the padding's too:
        # torch.func.functional_call swaps in the stack
        inputs = torch.cat([self.train["inputs"].flatten(0, 1), self.test["inputs"].flatten(0, 1)])
        self.module = fast(experiments[0].model, tables=experiments[0].cfg.tables, inputs=inputs)
        self.names = [name for name, _ in self.module.named_parameters()]  # in each run's parameters' order
        self.run_params = [list(e.model.parameters()) for e in experiments]
        self.params = {
            name: torch.stack([params[i].detach() for params in self.run_params]) for i, name in enumerate(self.names)
        }
        for stacked in self.params.values():
            stacked.requires_grad_()
        for k, params in enumerate(self.run_params):
            for name, param in zip(self.names, params):
                param.data = self.params[name].data[k]  # the run's optimizer updates the stack in place
        self.loss_fn = experiments[0].loss_fn
        self.sequences = experiments[0].train.labels.dim() == 2

    def _examples(self, splits) -> Dict[str, Tensor]:
        examples = {
            "inputs": _padded([s.inputs for s in splits], 0),
            "labels": _padded([s.labels for s in splits], IGNORE),
            "count": torch.tensor([len(s.labels) for s in splits], device=splits[0].labels.device),
        }
        examples["real"] = (
            torch.arange(examples["inputs"].shape[1], device=examples["count"].device) < examples["count"][:, None]
        )
        if len({split.clean_labels is None for split in splits}) > 1:
            raise ValueError("a stack's runs must all have clean labels (noisy tasks) or none")
        if splits[0].clean_labels is not None:
            examples["clean_labels"] = _padded([s.clean_labels for s in splits], IGNORE)
        return examples

    def _logits(self, params: Dict[str, Tensor], inputs: Tensor) -> Tensor:
        call = lambda p, x: torch.func.functional_call(self.module, p, (x,), {"all_positions": self.sequences})
        return torch.vmap(call)(params, inputs)

    def _metrics(self, losses: Tensor, logits: Tensor, examples: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """What grok/training/loop.py's train_epoch and evaluate return for a run alone, each (K,)."""
        return split_metrics(
            losses, logits, examples["labels"], examples.get("clean_labels"), self.sequences, examples["real"]
        )

    def epoch(self, evaluated: bool) -> Optional[Tuple[List[str], Tensor]]:
        """Train one epoch of every run; where `evaluated`, test too and return
        grok.training.metrics.measured's row names and (K, M) values. Out of GPU memory in the step
        is the loop's to split the batch on; in the test pass it fails the batch."""
        train_metrics = self.train_epoch()
        if not evaluated:
            return None
        try:
            test_metrics = self.evaluate()
        except torch.cuda.OutOfMemoryError as error:
            raise RuntimeError(f"a test pass of one run ran out of GPU memory: {error}") from error
        return measured(train_metrics, test_metrics, self.weight_norms())

    def train_epoch(self) -> Dict[str, Tensor]:
        """Every run's full-batch step: one forward and backward for all, each run's gradient that of
        its own loss alone, then each run's optimizer and schedule on its own slice of the gradients
        (grok.training.optimizers.step_together: runs whose optimizers agree step in one call).
        Returns their train metrics."""
        for stacked in self.params.values():
            stacked.grad = None
        logits = self._logits(self.params, self.train["inputs"])
        losses = torch.vmap(self.loss_fn)(logits, self.train["labels"])  # (K,)
        losses.sum().backward()
        per_run = zip(*(self.params[name].grad.unbind() for name in self.names))  # run k's gradients
        for params, grads in zip(self.run_params, per_run):
            for param, grad in zip(params, grads):
                param.grad = grad
        step_together([experiment.optimizer for experiment in self.experiments])
        for experiment in self.experiments:
            experiment.scheduler.step()
        return self._metrics(losses.detach(), logits.detach(), self.train)

    @torch.inference_mode()
    def evaluate(self, first: int = 0, end: Optional[int] = None) -> Dict[str, Tensor]:
        """Test metrics of runs first..end-1; halves the range when the GPU runs out of memory."""
        end = len(self.experiments) if end is None else end
        try:
            part = {name: stacked[first:end] for name, stacked in self.params.items()}
            test = {key: value[first:end] for key, value in self.test.items()}
            logits = self._logits(part, test["inputs"])
            return self._metrics(torch.vmap(self.loss_fn)(logits, test["labels"]), logits, test)
        except torch.cuda.OutOfMemoryError:
            if end - first == 1:
                raise
            torch.cuda.empty_cache()
            middle = (first + end) // 2
            halves = self.evaluate(first, middle), self.evaluate(middle, end)
            return {key: torch.cat([half[key] for half in halves]) for key in halves[0]}

    def weight_norms(self) -> Tensor:
        """(K,): each run's grok.training.loop.weight_norm, from the stack."""
        norms = [stacked.detach().flatten(1).norm(dim=1) for stacked in self.params.values()]  # per tensor
        return torch.linalg.vector_norm(torch.stack(norms), dim=0)

    def release(self) -> None:
        """Give each run's parameters storage of their own again."""
        for params in self.run_params:
            for param in params:
                param.data = param.data.clone()
