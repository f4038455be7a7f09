"""The captured epoch (`compile=true`): a run's whole epoch, its training step, test pass, metrics and
weight norm, as one function that torch.compile turns into one graph (fullgraph); on a GPU it runs as
one CUDA graph (mode "reduce-overhead"), so the host queues an epoch without waiting for the device
between its kernels.

The step is written as a function of the parameters: torch.func.grad differentiates the loss of the
run's module (fast(model, tables), grok/models/tables.py), and the optimizer's update is computed in
the graph, in place, on the optimizer's own state tensors (Adam's and AdamW's `step`, `exp_avg`,
`exp_avg_sq`; SGD's `momentum_buffer`). Checkpoints, snapshots and a run resumed without `compile`
therefore see the torch.optim optimizer as its own step would have left it. The update is
torch.optim's math, written out (tests/test_captured.py trains both ways from the same weights); the
compiled kernels sum in their own order, so the two agree to float32 rounding, not bit for bit.

Where an epoch cannot be captured (`unsupported` says why: minibatches, gradient transforms or other
hooks on the optimizer's step, another optimizer or an option of these three not written out here),
or where compiling fails (in the first calls of a compiled function: WARM_UP_CALLS), the run trains
uncompiled, and a warning says so.
"""

import logging
import warnings
from typing import Callable, List, Optional, Tuple

import torch
from torch import Tensor, nn

from grok.training import optimizers
from grok.training.experiment import Split
from grok.training.metrics import measure_split, row_names, split_metrics

ADAM_STATE = ("step", "exp_avg", "exp_avg_sq")
# calls of a compiled function that may still fail for the compiler's sake: the first traces and
# compiles; on a GPU the second records the CUDA graph that later calls replay
WARM_UP_CALLS = 2


def unsupported(cfg, optimizer: torch.optim.Optimizer, model: nn.Module, n_train: int) -> Optional[str]:
    """Why this run's epoch cannot be captured, or None where it can."""
    if cfg.batch_size is not None and cfg.batch_size < n_train:
        return "batch_size is set (minibatches draw a new order every epoch)"
    if cfg.transforms:
        return "transforms edit the gradients between backward and step"
    hooks = optimizers.step_hooks(optimizer)
    if hooks is not None:
        return hooks
    if len(optimizer.param_groups) != 1:
        return "the optimizer has more than one parameter group"
    group = optimizer.param_groups[0]
    if {id(p) for p in group["params"]} != {id(p) for p in model.parameters() if p.requires_grad}:
        return "the optimizer does not train exactly the model's parameters"
    if type(optimizer) in (torch.optim.Adam, torch.optim.AdamW, optimizers.Adam, optimizers.AdamW):
        if group["amsgrad"] or group["maximize"]:
            return "amsgrad and maximize are not written out for the captured step"
    elif type(optimizer) in (torch.optim.SGD, optimizers.SGD):
        if group["nesterov"] or group["maximize"] or group["dampening"]:
            return "nesterov, maximize and dampening are not written out for the captured step"
    else:
        return f"its step is written out for torch.optim's Adam, AdamW and SGD, not {type(optimizer).__name__}"
    return None


class _NoShimNotice(logging.Filter):
    """Drops Inductor's notice that its C++ wrapper calls an ATen operation through its proxy
    executor (embedding_bag's backward, torch 2.13): a call to the same operation, nothing to act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "missing a c-shim implementation" not in record.getMessage()


_NO_SHIM_NOTICE = _NoShimNotice()


class CompileFailed(RuntimeError):
    """torch.compile could not capture or compile the epoch; the run goes on uncompiled."""


class CapturedEpoch:
    """One run's epochs through compiled functions: `epoch(evaluated)` trains one epoch and returns
    grok.training.metrics.measured's row names and (1, M) values where it is evaluated, None where
    not. `options` go to torch.compile (tests choose a backend)."""

    def __init__(
        self,
        module: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler,
        train: Split,
        test: Split,
        loss_fn: Callable[[Tensor, Tensor], Tensor],
        **options,
    ):
        self.module, self.optimizer, self.scheduler, self.loss_fn = module, optimizer, scheduler, loss_fn
        self.names, params = zip(*module.named_parameters())
        self.params = list(params)
        self.train, self.test = train, test
        self.sequences = train.labels.dim() == 2
        self.device = self.params[0].device
        self.lr = torch.zeros((), dtype=torch.float64, device=self.device)
        group = optimizer.param_groups[0]
        self.adam = isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW))
        self.state_keys = ADAM_STATE if self.adam else ("momentum_buffer",) if group["momentum"] else ()
        # the graph's constants: all but the learning rate, which the schedule changes (an input)
        self.hyper = {key: value for key, value in group.items() if key not in ("params", "lr")}
        if self.adam:  # torch 2.13's AdamW is an Adam with this key; a torch whose AdamW stands apart has none
            self.hyper.setdefault("decoupled_weight_decay", isinstance(optimizer, torch.optim.AdamW))
        # the schedule warns when it steps before the optimizer has: here the epoch steps the optimizer
        optimizer._opt_called = True
        if self.device.type == "cuda":  # tensors a CUDA graph reads in place rather than copies in each time
            for tensor in (self.lr, train.inputs, train.labels, test.inputs, test.labels):
                torch._dynamo.mark_static_address(tensor)
            if "backend" not in options:  # CUDA graphs are the default backend's (Inductor's)
                options.setdefault("mode", "reduce-overhead")
        elif "backend" not in options:
            # Inductor's C++ without its own SIMD code (torch 2.13): that code corrupted the heap
            # (p=11), read garbage embedding_bag offsets under ATEN_CPU_CAPABILITY=avx2 and did not
            # build under =default; its scalar loops ran these graphs as fast. The kernels are called
            # from C++ rather than Python: for small models that call is most of an epoch
            # (docs/performance.md)
            options.setdefault("options", {"cpp.simdlen": 1, "cpp_wrapper": True})
            logging.getLogger("torch._inductor.ir").addFilter(_NO_SHIM_NOTICE)  # a no-op once it is there
        # a fresh start: every shape of run adds an entry to the cache of the one function below, and
        # past a few (recompile_limit, 8) Dynamo refuses to compile it again, with fullgraph by raising:
        # a sweep's jobs of several shapes in one process would get there
        torch.compiler.reset()
        self.compiled = {
            evaluated: torch.compile(self._epoch_function(evaluated), fullgraph=True, dynamic=False, **options)
            for evaluated in (False, True)
        }
        self.state_of: Optional[dict] = None  # the optimizer's state that state_lists holds the tensors of
        self.state_lists: List[List[Tensor]] = []
        self.calls = {False: 0, True: 0}  # successful calls of each compiled function
        self.names_of_row: Optional[List[str]] = None

    # ------------------------------------------------------------------------- outside the graph
    def _state(self) -> List[List[Tensor]]:
        """Per state key, the optimizer's tensor of each parameter, made where a fresh or restored
        optimizer has none yet (torch.optim makes them on its first step, zeros, as here). Looked up
        again only when the optimizer's state is a new one: load_state_dict (a resume, a snapshot
        restored) replaces it."""
        if self.optimizer.state is self.state_of:
            return self.state_lists
        for p in self.params:
            state = self.optimizer.state[p]
            for key in self.state_keys:
                if state.get(key) is None:
                    state[key] = self._new_step(p) if key == "step" else torch.zeros_like(p)
                if self.device.type == "cuda":  # updated in place by the CUDA graph (a restore makes new ones)
                    torch._dynamo.mark_static_address(state[key])
        self.state_of = self.optimizer.state
        self.state_lists = [[self.optimizer.state[p][key] for p in self.params] for key in self.state_keys]
        return self.state_lists

    def _new_step(self, p: Tensor) -> Tensor:
        """Adam's step count as torch.optim makes it: float32 beside the parameter where the step is
        fused or capturable, else on the host in the default float type's precision."""
        group = self.optimizer.param_groups[0]
        on_device = group["fused"] or group["capturable"]
        dtype = torch.float64 if not on_device and torch.get_default_dtype() == torch.float64 else torch.float32
        return torch.zeros((), dtype=dtype, device=p.device if on_device else "cpu")

    def epoch(self, evaluated: bool) -> Optional[Tuple[List[str], Tensor]]:
        self.lr.fill_(self.optimizer.param_groups[0]["lr"])
        args = (self.params, self._state(), self.lr, self.train, self.test)
        if self.calls[evaluated] >= WARM_UP_CALLS:
            # Warmed up, the graph is called with the same tensors (or, restored, ones of the same
            # shapes, dtypes and devices) every epoch: Dynamo need check only the guards that tell its
            # two graphs apart, evaluated or not, and the tensors', not all of them (0.04 ms an epoch;
            # docs/performance.md). Where what a graph guards on has changed since (the grad mode, say),
            # Dynamo refuses to compile again under that stance, before the graph runs: then the graph
            # is warmed up again, looked up with every guard.
            try:
                with torch.compiler.set_stance(skip_guard_eval_unsafe=True):
                    measured = self.compiled[evaluated](*args)
            except RuntimeError as error:
                if "Recompilation triggered with skip_guard_eval_unsafe" not in str(error):
                    raise
                self.calls[evaluated] = 0
        if self.calls[evaluated] < WARM_UP_CALLS:
            try:
                measured = self.compiled[evaluated](*args)
            except torch.cuda.OutOfMemoryError:
                raise
            except Exception as error:
                cause = error  # torch's errors wrap the one that says what went wrong
                while getattr(cause, "inner_exception", None) or cause.__cause__:
                    cause = getattr(cause, "inner_exception", None) or cause.__cause__
                raise CompileFailed(f"{type(cause).__name__}: {cause}".splitlines()[0]) from error
            self.calls[evaluated] += 1
        self.scheduler.step()
        if not evaluated:
            return None
        values, metrics = measured
        self.names_of_row = self.names_of_row or row_names(*metrics)
        # a copy: on a GPU the next replay of the CUDA graph overwrites its outputs, and a block
        # keeps its epochs' values until it ends
        return self.names_of_row, values[None].clone()

    # ------------------------------------------------------------------------- in the graph
    def _epoch_function(self, evaluated: bool):
        names, module, loss_fn, sequences = self.names, self.module, self.loss_fn, self.sequences
        update = self._adam_update if self.adam else self._sgd_update

        def epoch(params: List[Tensor], state: List[List[Tensor]], lr: Tensor, train: Split, test: Split):
            """Where evaluated, the epoch's values (M,) as grok.training.metrics.measured orders
            them, and its train and test metrics by name."""

            def loss_of(weights: List[Tensor]):
                logits = torch.func.functional_call(
                    module, dict(zip(names, weights)), (train.inputs,), {"all_positions": sequences}
                )
                loss = loss_fn(logits, train.labels)
                return loss, (loss, logits)

            grads, (loss, logits) = torch.func.grad(loss_of, has_aux=True)([p.detach() for p in params])
            with torch.no_grad():
                train_metrics = split_metrics(loss, logits, train.labels, train.clean_labels, sequences)
                update(params, grads, state, lr)
                if not evaluated:
                    return None
                test_metrics = measure_split(module, test, loss_fn)
                norm = torch.linalg.vector_norm(torch.stack([p.norm() for p in params]))
                measured = [*train_metrics.values(), *test_metrics.values(), norm]
                return torch.stack([value.double() for value in measured]), (train_metrics, test_metrics)

        return epoch

    def _adam_update(self, params: List[Tensor], grads: List[Tensor], state: List[List[Tensor]], lr: Tensor):
        """torch.optim.Adam's step (AdamW's with decoupled_weight_decay), without amsgrad."""
        group = self.hyper
        (beta1, beta2), eps, decay = group["betas"], group["eps"], group["weight_decay"]
        for p, grad, step, exp_avg, exp_avg_sq in zip(params, grads, *state):
            step.add_(1)
            if group["decoupled_weight_decay"]:
                p.mul_(1 - lr * decay)
            elif decay:
                grad = grad + decay * p
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            count = step.double()  # the bias corrections in float64, as torch.optim's fused step computes them
            step_size = lr / (1 - beta1**count)
            denom = exp_avg_sq.sqrt() / torch.sqrt(1 - beta2**count) + eps
            p.sub_(step_size * exp_avg / denom)

    def _sgd_update(self, params: List[Tensor], grads: List[Tensor], state: List[List[Tensor]], lr: Tensor):
        """torch.optim.SGD's step, without nesterov or dampening. Its first step sets the momentum
        buffer to the gradient; a buffer of zeros times momentum plus the gradient is that exactly."""
        group = self.hyper
        buffers = state[0] if state else [None] * len(params)
        for p, grad, buffer in zip(params, grads, buffers):
            if group["weight_decay"]:
                grad = grad + group["weight_decay"] * p
            if buffer is not None:
                grad = buffer.mul_(group["momentum"]).add_(grad)
            p.sub_(lr * grad)


def captured_epoch(experiment, module: nn.Module, **options) -> Optional[CapturedEpoch]:
    """The run's captured epoch through `module` (fast(model, tables)), or None with a warning that says
    why its epoch cannot be captured."""
    why = unsupported(experiment.cfg, experiment.optimizer, experiment.model, len(experiment.train.labels))
    if why is not None:
        warnings.warn(f"compile=true: the epoch is not captured, the run trains uncompiled: {why}", stacklevel=2)
        return None
    e = experiment
    return CapturedEpoch(module, e.optimizer, e.scheduler, e.train, e.test, e.loss_fn, **options)
