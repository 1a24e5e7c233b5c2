"""Kernel problems on a precomputed kernel: least squares (+ ridge), logistic regression, SVR.

Shapes: ``train_kernel`` ``[N, C, N, C]``, ``eval_kernel`` ``[N, C, M, C]`` with the training
examples first (``K[i, c, j, d] = K(x_i, x_j)`` for training ``x_i``), ``f0_*`` the initial outputs
``[N, C]``/``[M, C]``, ``labels`` ``[N]``. Every solver fits coefficients ``alpha`` (one per training
example and output) so that ``f(x) = f0(x) + sum_{i,c} alpha[i, c] K[i, c, x, :]`` fits the training
set, and returns ``f`` on the eval set, ``[M, C]``. With ``subtract_init=False``, ``f0`` is taken as 0.

Targets: ``+1`` for the gold class and ``-1`` for the others (``C = 1``, one output: ``+1`` for class 1,
``-1`` for class 0); the predicted class is the argmax (``C = 1``: the sign). All in float64 with
torch, on the CPU; scikit-learn is not needed:

* ``lstsq``: ``alpha = argmin ||K^T alpha - (y - f0)||`` (minimum norm), with ``kernel_ridge`` lambda
  adding ``lambda ||K||_F I`` to the kernel first; without ridge it interpolates the training targets
  whenever the kernel is non-singular. With the ``sgd`` kernel (the eNTK) and no ridge, this is where
  gradient descent (small enough steps) on the squared loss converges from the initial parameters
  for the model linearised there, ``f0(x) + J(x) (theta - theta0)``: exactly so for a model linear in
  its parameters (tested), and for a network only as far as fine-tuning stays in that kernel regime.
  The ``signgd`` and ``asymmetric_signgd`` kernels describe how one step of sign-based descent
  (SignGD; Adam's early steps) moves the outputs early in training (Malladi et al., 2023, Sec. 4);
  solving a kernel problem with them is kernel regression with that kernel, as the paper does, not
  the limit of any training run: SignGD does not converge to this solution.
* ``logistic``: cross-entropy of ``f`` (softmax over the label words; ``C = 1``: sigmoid) plus
  ``||alpha||^2 / (2 C_reg N)``, on the kernel normalised by its mean diagonal, by L-BFGS.
* ``svr``: the L2-loss (squared epsilon-insensitive) SVR of LIBLINEAR in kernel form,
  ``alpha^T K alpha / 2 + C_reg sum max(0, |y - f| - eps)^2`` (``||alpha||^2 / 2`` for the asymmetric
  kernel, whose quadratic form is no norm), by L-BFGS. libsvm's L1-loss SVR is not implemented.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SOLVERS = ("lstsq", "logistic", "svr")
MAX_ITERATIONS = 500


def targets(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """``[N, C]`` float64 targets: +1 for the gold class, -1 for the others (one output: +-1)."""
    if classes == 1:
        return (labels.double() * 2 - 1).unsqueeze(1)
    return F.one_hot(labels, classes).double() * 2 - 1


def predict(scores: torch.Tensor) -> torch.Tensor:
    """Class indices from outputs ``[M, C]`` (one output: positive means class 1)."""
    if scores.shape[1] == 1:
        return (scores[:, 0] > 0).long()
    return scores.argmax(dim=1)


def solve(
    solver: str,
    train_kernel: torch.Tensor,
    eval_kernel: torch.Tensor,
    labels: torch.Tensor,
    f0_train: torch.Tensor,
    f0_eval: torch.Tensor,
    *,
    ridge: float = 0.0,
    c_reg: float = 1000.0,
    epsilon: float = 0.1,
    symmetric: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit ``solver`` on the training kernel; return the outputs on the training and on the eval examples."""
    n, classes = f0_train.shape
    gram = train_kernel.reshape(n * classes, n * classes).double()  # [(i, c), (j, d)]
    cross = eval_kernel.reshape(n * classes, -1).double()  # [(i, c), (m, d)]
    f0_train, f0_eval = f0_train.double(), f0_eval.double()
    if solver == "lstsq":
        alpha = _lstsq(gram, (targets(labels, classes) - f0_train).reshape(-1), ridge)
    elif solver == "logistic":
        alpha = _logistic(gram, labels, f0_train, c_reg)
    elif solver == "svr":
        alpha = _svr(gram, (targets(labels, classes) - f0_train).reshape(-1), c_reg, epsilon, symmetric)
    else:
        raise ValueError(f"unknown kernel solver {solver!r}; solvers: {', '.join(SOLVERS)}")
    train_out = f0_train + (gram.T @ alpha).reshape(n, classes)
    eval_out = f0_eval + (cross.T @ alpha).reshape(-1, classes)
    return train_out, eval_out


def _lstsq(gram: torch.Tensor, residual: torch.Tensor, ridge: float) -> torch.Tensor:
    system = gram.T.clone()
    if ridge:
        system += ridge * torch.linalg.norm(gram) * torch.eye(len(gram), dtype=gram.dtype)
    # gelsd: the minimum-norm solution, also for a singular kernel (CPU only; the kernel is small).
    return torch.linalg.lstsq(system, residual.unsqueeze(1), driver="gelsd").solution[:, 0]


def _scale(gram: torch.Tensor) -> torch.Tensor:
    """The kernel's mean diagonal: solvers with a penalty work on ``K / scale`` so C means the same for any model."""
    scale = gram.diagonal().abs().mean()
    return scale if scale > 0 else torch.ones((), dtype=gram.dtype)


def _minimise(loss_fn, size: int) -> torch.Tensor:
    alpha = torch.zeros(size, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [alpha],
        lr=1.0,
        max_iter=MAX_ITERATIONS,
        tolerance_grad=1e-10,
        tolerance_change=1e-14,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = loss_fn(alpha)
        loss.backward()
        return loss

    optimizer.step(closure)
    return alpha.detach()


def _logistic(gram: torch.Tensor, labels: torch.Tensor, f0: torch.Tensor, c_reg: float) -> torch.Tensor:
    n, classes = f0.shape
    scale = _scale(gram)
    normed = gram / scale

    def loss_fn(alpha: torch.Tensor) -> torch.Tensor:
        out = f0 + (normed.T @ alpha).reshape(n, classes)
        if classes == 1:
            fit = F.binary_cross_entropy_with_logits(out[:, 0], labels.double())
        else:
            fit = F.cross_entropy(out, labels)
        return fit + alpha.square().sum() / (2 * c_reg * n)

    return _minimise(loss_fn, n * classes) / scale


def _svr(gram: torch.Tensor, residual: torch.Tensor, c_reg: float, epsilon: float, symmetric: bool) -> torch.Tensor:
    scale = _scale(gram)
    normed = gram / scale

    def loss_fn(alpha: torch.Tensor) -> torch.Tensor:
        out = normed.T @ alpha
        penalty = alpha @ normed @ alpha if symmetric else alpha.square().sum()
        slack = ((out - residual).abs() - epsilon).clamp(min=0)
        return 0.5 * penalty + c_reg * slack.square().sum()

    return _minimise(loss_fn, len(gram)) / scale
