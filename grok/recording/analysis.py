"""Progress measures: what changes inside the model before the test loss falls.

- Weight norm of every parameter tensor.
- Nanda et al. (2023)'s Fourier analysis of modular arithmetic: the norm of the token embedding in
  each Fourier frequency, the key frequencies (the `n_key` largest), the Gini coefficient of those
  norms (0: spread evenly, -> 1: concentrated in a few), and on the train set the restricted loss
  (logits projected onto the key frequencies' cos/sin(w(a + b - c)) directions) and the excluded
  loss (those directions removed). A model that has found the Fourier algorithm has a restricted
  loss near its loss and a large excluded loss.
- Softmax collapse of Prieto et al. (2025): the fraction of train examples whose float32
  cross-entropy is exactly 0, and the fraction whose float32 softmax is saturated (top probability 1).
"""

import math
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from grok.models import fast


def fourier_basis(p: int, device: Optional[torch.device] = None) -> Tensor:
    """(p, p) orthonormal rows over Z_p: constant, then cos(w_k x), sin(w_k x) for k = 1 .. p//2."""
    x = torch.arange(p, dtype=torch.float64, device=device)
    rows = [torch.ones(p, dtype=torch.float64, device=device)]
    for k in range(1, p // 2 + 1):
        rows.append(torch.cos(2 * math.pi * k * x / p))
        if 2 * k != p:  # for even p, sin(pi x) is zero
            rows.append(torch.sin(2 * math.pi * k * x / p))
    basis = torch.stack(rows)
    return basis / basis.norm(dim=1, keepdim=True)


def frequency_norms(embedding: Tensor) -> Tensor:
    """Norm of the (p, d) embedding in each frequency k = 1 .. p//2 (cos and sin parts together)."""
    p = embedding.shape[0]
    coefficients = fourier_basis(p, embedding.device) @ embedding.double()  # (p, d): row 0 constant, then cos_k, sin_k
    return torch.stack([coefficients[2 * k - 1 : 2 * k + 1].norm() for k in range(1, p // 2 + 1)])


def gini(values: Tensor) -> float:
    """Gini coefficient of non-negative values: 0 when equal, (n-1)/n when all mass is in one."""
    x = values.double().sort().values
    n = len(x)
    ranks = torch.arange(1, n + 1, dtype=torch.float64, device=x.device)
    return float(((2 * ranks - n - 1) * x).sum() / (n * x.sum()))


def embedding_spectrum(model: torch.nn.Module, p: Optional[int]) -> Optional[Tensor]:
    """Frequency norms of the model's token embedding, where it has one (W_E) over Z_p tokens."""
    if p is None or not hasattr(model, "W_E"):
        return None
    return frequency_norms(model.W_E[:p].detach())


def key_frequencies(norms: Tensor, n_key: int) -> List[int]:
    return sorted((norms.argsort(descending=True)[:n_key] + 1).tolist())


def restricted_and_excluded_loss(
    logits: Tensor, a: Tensor, b: Tensor, labels: Tensor, p: int, freqs: List[int], sign: int = 1
) -> Dict[str, float]:
    """The (N, p) logits' least-squares projection onto the directions cos, sin(w_k(a + sign*b - c))
    of the key frequencies k (restricted), and the logits less it (excluded). Over the p classes c of
    any one example these directions are orthogonal, so the projection is the sum of each direction's
    own: computed so, it repeats bit for bit (LAPACK's least-squares solver, used before, rounded by
    where its buffers lay in memory: the last digits of two identical runs' measures differed)."""
    c = torch.arange(p, dtype=torch.float64, device=logits.device)
    phase = (a + sign * b).double()[:, None] - c[None, :]  # (N, p)
    angles = {k: 2 * math.pi * k / p * phase for k in freqs}
    directions = [torch.cos(x) for x in angles.values()]
    directions += [torch.sin(x) for k, x in angles.items() if 2 * k != p]  # for even p, sin(pi x) is zero
    x = logits.double()
    restricted = sum((d * x).sum() / (d * d).sum() * d for d in directions)
    return {
        "restricted_loss": F.cross_entropy(restricted, labels).item(),
        "excluded_loss": F.cross_entropy(x - restricted, labels).item(),
    }


def softmax_collapse(logits: Tensor, labels: Tensor) -> Dict[str, float]:
    logits32 = logits.float()
    losses = F.cross_entropy(logits32, labels, reduction="none")
    return {
        "zero_loss_frac": (losses == 0).double().mean().item(),
        "saturated_frac": (logits32.softmax(-1).max(-1).values == 1).double().mean().item(),
    }


@torch.no_grad()
def progress_measures(
    model: torch.nn.Module,
    p: Optional[int],
    fourier_sign: Optional[int],
    inputs: Tensor,
    labels: Tensor,
    n_key: int,
    tables: Optional[bool] = None,
) -> Dict[str, float]:
    """All measures for the model on the train split (inputs (N, 3) tokens [a, b, =], labels (N,)).
    `fourier_sign`: the task's labels are (a + sign*b) mod p, where the restricted and excluded
    losses apply (the task's own attribute; None elsewhere). `tables`: the run's config's."""
    was_training = model.training
    model.eval()
    logits = fast(model, tables=tables, inputs=inputs)(inputs)  # (N, C), as training computes them
    model.train(was_training)
    measures = {f"weight_norm/{name}": param.norm().item() for name, param in model.named_parameters()}
    measures.update(softmax_collapse(logits, labels))
    norms = embedding_spectrum(model, p)
    if norms is not None:
        freqs = key_frequencies(norms, n_key)
        measures.update(fourier_gini=gini(norms), key_frequencies=" ".join(map(str, freqs)))
        if fourier_sign is not None:
            measures.update(
                restricted_and_excluded_loss(logits, inputs[:, 0], inputs[:, 1], labels, p, freqs, fourier_sign)
            )
    return measures
