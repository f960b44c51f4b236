"""Training (Sec. 3.3, Sec. 4.2, App. D): the cross-entropy warm start and its adversarial
baselines (QTRADES on the head, TRADES, Free AT), and Magnet fine-tuning (± QTRADES).

Data stay on the training device (:class:`~clustr_lib.data.ImageData` or
:class:`~clustr_lib.data.TensorData`); batches are drawn by index and augmented on the
device, so no data loader and no per-sample Python work sits in the loop. Every trainer
can checkpoint each epoch and resume an interrupted run to the same result.

Losses and accuracies are summed on the device and read once per epoch (no host sync per
step in the cross-entropy loops). ``precision`` (:data:`PRECISIONS`, default ``"fp32"``)
runs the network's forward passes under autocast (:class:`TrainingPrecision`): the losses,
Eq. (4) and every distance stay in float32 outside it, and evaluation never sees it.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import clock
from .attacks import QTRADES_FORMS, project, qtrades_adversary, soft_cross_entropy
from .checks import check_choice, check_positive, progress_enabled
from .classify import ClusterClassifier, ClusterModel, normalised_scores
from .data import TensorData
from .files import atomic_write, move_aside, sha256_file
from .magnet import (
    EPOCH_LENGTHS,
    SEED_PROBABILITIES,
    ClusterIndex,
    NeighbourhoodSampler,
    exact_float32,
    magnet_loss,
)


@dataclass
class History:
    """Per-epoch training log and the wall time of training alone (seconds)."""

    loss: list = field(default_factory=list)
    accuracy: list = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {"loss": self.loss, "accuracy": self.accuracy, "seconds": self.seconds}


@torch.no_grad()
def embed_all(embedder: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Embeddings of a whole set without autograd, in eval mode (mode restored after)."""
    was_training = embedder.training
    embedder.eval()
    out = torch.cat([embedder(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
    embedder.train(was_training)
    return out


class Checkpoint:
    """A run's state after its last finished epoch, and the one before it.

    Each file is written atomically under a unique temporary name
    (:func:`clustr_lib.files.atomic_write`) with its SHA-256 beside it (``<file>.sha256``),
    and read with ``torch.load(weights_only=True)``: only tensors, numbers, strings and
    containers. On load, a file whose bytes do not match its digest, or that does not load,
    is moved aside with a warning naming it, and the previous epoch's state (``<file>.prev``)
    is used instead: a flipped byte or a truncated file never resumes into other weights, and a
    run restarts from its last good state. ``path=None`` disables checkpointing.
    """

    def __init__(self, path=None):
        self.path = Path(path) if path is not None else None

    def _pairs(self):
        prev = self.path.with_name(self.path.name + ".prev")
        return [(p, p.with_name(p.name + ".sha256")) for p in (self.path, prev)]

    def load(self) -> dict | None:
        if self.path is None:
            return None
        for path, digest in self._pairs():
            if not path.exists():
                continue
            try:
                if not digest.exists() or digest.read_text().strip() != sha256_file(path):
                    raise ValueError("its bytes do not match the recorded SHA-256")
                return torch.load(path, map_location="cpu", weights_only=True)
            except Exception as err:  # noqa: BLE001 - any unreadable checkpoint is set aside
                aside = move_aside(path)
                digest.unlink(missing_ok=True)
                warnings.warn(
                    f"checkpoint {path} is damaged ({err}); moved to {aside.name}, "
                    "resuming from the previous good state if there is one",
                    stacklevel=2,
                )
        return None

    def save(self, state: dict) -> None:
        if self.path is None:
            return
        (current, current_sha), (prev, prev_sha) = self._pairs()
        fresh = atomic_write(
            self.path.with_name(self.path.name + ".new"), lambda tmp: torch.save(state, tmp)
        )
        digest = sha256_file(fresh)
        if current.exists():  # the last good state becomes the previous one
            os.replace(current, prev)
            if current_sha.exists():
                os.replace(current_sha, prev_sha)
        os.replace(fresh, current)
        atomic_write(current_sha, lambda tmp: Path(tmp).write_text(digest + "\n"))

    def clear(self) -> None:
        """Delete the checkpoint files (the run is finished and its weights saved)."""
        if self.path is None:
            return
        for path, digest in self._pairs():
            path.unlink(missing_ok=True)
            digest.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------
# Precision and memory layout of the training forward passes.

PRECISIONS = ("fp32", "bf16", "fp16")
_HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}


def bf16_supported(device) -> bool:
    """Whether ``device`` runs bfloat16 natively (CPUs: autocast supports it everywhere)."""
    device = torch.device(device)
    if device.type != "cuda":
        return True
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # torch < 2.3 has no including_emulation
        return bool(torch.cuda.is_bf16_supported())


def resolve_precision(precision: str, device) -> str:
    """The precision a run requesting ``precision`` trains in on ``device``: ``"bf16"``
    becomes ``"fp16"`` (with a gradient scaler) on a CUDA device without bfloat16 (e.g. a T4)."""
    check_choice(precision, "precision", PRECISIONS)
    if precision == "bf16" and not bf16_supported(device):
        return "fp16"
    return precision


def _grad_scaler(device_type: str):
    try:
        return torch.amp.GradScaler(device_type)
    except (AttributeError, TypeError):  # torch < 2.3: CUDA only
        return torch.cuda.amp.GradScaler()


class _NetworkForward(nn.Module):
    """``module``'s forward pass in the run's precision and layout: inputs channels-last,
    autocast (and TF32 matrix products) inside, half outputs cast back to float32, so that
    everything computed from them (losses, Eq. 4, distances) is float32 outside autocast.
    Shares ``module``'s parameters and train/eval mode; never saved, never evaluated."""

    def __init__(self, module: nn.Module, owner: TrainingPrecision):
        super().__init__()
        self.module = module
        self.owner = owner
        self.train(module.training)

    def forward(self, x):
        owner = self.owner
        if owner.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with owner.autocast():
            out = self.module(x)
        return out.float() if out.dtype in (torch.bfloat16, torch.float16) else out


class TrainingPrecision:
    """How a run's training forward passes compute: ``precision`` (:data:`PRECISIONS`) and
    memory layout on ``device``.

    * ``"fp32"`` (default): as written; on a CPU nothing at all changes.
    * ``"bf16"``: the network's forward passes under ``torch.autocast(dtype=bfloat16)``;
      where the device lacks bfloat16 (:func:`resolve_precision`) this becomes ``"fp16"``
      with a warning.
    * ``"fp16"``: autocast to float16 with a gradient scaler (``torch.amp.GradScaler``),
      whose state goes into the checkpoint.

    Only the network runs in half precision (:meth:`network`): its outputs are cast back to
    float32, and the losses, the Magnet loss, Eq. (4), the QTRADES and TRADES terms and all
    distances are computed from them in float32 with autocast off (:func:`exact_float32`).
    The training-time adversaries (QTRADES, TRADES, Free AT) go through the same network
    forward; the evaluation attacks get the plain model and never run under autocast.

    ``channels_last`` (``None``: on CUDA): the network's weights and 4-D inputs in
    channels-last layout during training (the trainers hand the model back contiguous). On
    CUDA, :meth:`flags` also turns on ``cudnn.benchmark`` and TF32 convolutions for the run
    (TF32 matrix products inside the network only), restored after.
    ``name`` is the precision in use, ``requested`` the one asked for.
    """

    def __init__(self, precision: str = "fp32", device="cpu", channels_last: bool | None = None):
        self.device = torch.device(device)
        self.requested = check_choice(precision, "precision", PRECISIONS)
        self.name = resolve_precision(precision, self.device)
        if self.name != self.requested:
            warnings.warn(
                f"{self.device} has no bfloat16: training in fp16 with a gradient scaler",
                stacklevel=2,
            )
        cuda = self.device.type == "cuda"
        self.channels_last = cuda if channels_last is None else bool(channels_last)
        self.dtype = _HALF.get(self.name)
        self.scaler = _grad_scaler(self.device.type) if self.name == "fp16" else None

    @property
    def plain(self) -> bool:
        """True when nothing differs from the code as written (fp32, usual layout, CPU)."""
        return self.dtype is None and not self.channels_last and self.device.type != "cuda"

    def autocast(self):
        """The context of a network forward: autocast to the run's half type (else none),
        TF32 matrix products on CUDA. Its cache of half-precision weights is off: inside the
        run's autocast-free :meth:`flags` the nesting never unwinds, so a cached copy would
        outlive the optimiser step that changed its weights (the network would stop learning)."""
        if self.device.type != "cuda":
            if self.dtype is None:
                return contextlib.nullcontext()
            return torch.autocast(self.device.type, dtype=self.dtype, cache_enabled=False)
        stack = contextlib.ExitStack()
        stack.enter_context(_matmul_tf32(True))
        if self.dtype is not None:
            stack.enter_context(torch.autocast("cuda", dtype=self.dtype, cache_enabled=False))
        return stack

    def network(self, module: nn.Module) -> nn.Module:
        """``module`` itself when :attr:`plain`, else its forward in this precision and layout
        (:class:`_NetworkForward`); converts the weights to channels-last if asked."""
        if self.plain:
            return module
        if self.channels_last:
            module.to(memory_format=torch.channels_last)
        return _NetworkForward(module, self)

    @contextlib.contextmanager
    def flags(self):
        """The whole run: float32 as written outside the network (:func:`exact_float32`), and on
        CUDA ``cudnn.benchmark`` and TF32 convolutions; the previous settings restored after."""
        if self.device.type != "cuda":
            with exact_float32(self.device):
                yield
            return
        cudnn = torch.backends.cudnn
        before = cudnn.benchmark, cudnn.allow_tf32
        cudnn.benchmark, cudnn.allow_tf32 = True, True
        try:
            with exact_float32(self.device):
                yield
        finally:
            cudnn.benchmark, cudnn.allow_tf32 = before

    def update(self, loss: torch.Tensor, optimizer) -> None:
        """``zero_grad``, ``backward`` and ``step`` (through the gradient scaler in fp16)."""
        optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            optimizer.step()
            return
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> dict:
        return {} if self.scaler is None else self.scaler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


@contextlib.contextmanager
def _matmul_tf32(allowed: bool):
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = allowed
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def _update(loss, optimizer, amp) -> None:
    """One optimiser update from ``loss`` (``amp``: a :class:`TrainingPrecision` or ``None``)."""
    if amp is not None:
        amp.update(loss, optimizer)
        return
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


class _Generators:
    """The run's random streams: batch order (CPU) and augmentation/noise (device)."""

    def __init__(self, seed: int, device):
        self.cpu = torch.Generator().manual_seed(seed)
        self.device = torch.Generator(device=device).manual_seed(seed + 1)

    def state(self) -> dict:
        return {"cpu": self.cpu.get_state(), "device": self.device.get_state()}

    def restore(self, state: dict) -> None:
        self.cpu.set_state(state["cpu"])
        self.device.set_state(state["device"])


def _run_epochs(
    desc,
    epochs,
    model,
    optimizer,
    scheduler,
    generators,
    one_epoch,
    checkpoint,
    progress,
    extra_state=None,
    restore_extra=None,
    amp: TrainingPrecision | None = None,
    network: nn.Module | None = None,
) -> History:
    """Run ``one_epoch()`` (returns ``(loss, accuracy)``) ``epochs`` times, resuming from and
    writing to ``checkpoint`` after every epoch (``amp``: the run's precision, whose flags
    hold for the whole run and whose gradient scaler, if any, is checkpointed too;
    ``network``: the module the steps call, put in training mode; default ``model``)."""
    amp = TrainingPrecision() if amp is None else amp
    network = model if network is None else network
    history = History()
    start_epoch, carried = 0, 0.0
    saved = checkpoint.load()
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(saved["scheduler"])
        generators.restore(saved["generators"])
        torch.set_rng_state(saved["torch_rng"])
        history = History(**json.loads(saved["history"]))
        start_epoch, carried = int(saved["epoch"]), history.seconds
        if restore_extra is not None:
            restore_extra(saved["extra"])
        amp.load_state_dict(saved.get("scaler", {}))
    progress = progress_enabled() if progress is None else progress
    bar = tqdm(
        range(start_epoch, int(epochs)),
        desc=desc,
        disable=not progress,
        leave=False,
        initial=start_epoch,
        total=int(epochs),
    )
    start = clock.seconds()
    network.train()
    for epoch in bar:
        with amp.flags():
            loss, accuracy = one_epoch()
        if scheduler is not None:
            with warnings.catch_warnings():
                # an epoch whose every batch was dropped (drop_short_batches on a small set)
                # made no optimiser step; the epoch-based milestones must still advance
                warnings.filterwarnings("ignore", r"Detected call of `lr_scheduler\.step\(\)`")
                scheduler.step()
        history.loss.append(loss)
        history.accuracy.append(accuracy)
        history.seconds = carried + clock.seconds() - start
        bar.set_postfix(loss=f"{loss:.3f}", acc=f"{accuracy:.3f}")
        state = {
            "epoch": epoch + 1,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else {},
            "generators": generators.state(),
            "torch_rng": torch.get_rng_state(),
            "history": json.dumps(history.as_dict()),
            "extra": extra_state() if extra_state is not None else {},
        }
        if amp.scaler is not None:  # fp16 only: fp32 checkpoints keep their keys
            state["scaler"] = amp.state_dict()
        checkpoint.save(state)
    if amp.channels_last:  # hand the model back in the usual layout (AutoAttack's FAB-T
        model.to(memory_format=torch.contiguous_format)  # crashes on channels-last on a CPU)
    return history


# ---------------------------------------------------------------------------------------
# Cross-entropy training and its adversarial variants (one optimiser step per batch,
# Free AT: m steps per batch).

STEPS = ("nominal", "qtrades", "trades", "free_at")


# Every step returns ``(loss, logits)`` with the loss a detached 0-d tensor (no host sync);
# ``amp`` is the run's :class:`TrainingPrecision` (``None``: plain float32 updates) and
# ``model`` the network as the run calls it (:meth:`TrainingPrecision.network`).


def nominal_step(model, optimizer, x, y, generator, *, amp=None, **_):
    logits = model(x)
    loss = F.cross_entropy(logits, y)
    _update(loss, optimizer, amp)
    return loss.detach(), logits


QTRADES_LOSSES = ("ce", "kl", "official_kl")


def qtrades_term(log_q_adv: torch.Tensor, log_p: torch.Tensor, kind: str = "ce") -> torch.Tensor:
    """Batch mean of the QTRADES regulariser between ``p(x)`` and ``q = p(x_adv)``.

    ``ce``: Eq. (5)'s ``CE(p(x_adv), p(x)) = −Σ p log q``; ``kl``: TRADES' ``KL(p ‖ q)``, the
    same minus the entropy of ``p``. Gradients flow through both distributions, as in
    TRADES; with ``ce`` the entropy term then also pulls ``p(x)`` towards confident
    predictions of any class. ``official_kl``: the official code's QTRADES on a cross-entropy
    head (its first upload, ``F.kl_div(softmax(x_adv), softmax(x), reduction="mean")``), i.e.
    ``mean over batch and classes of p·(log p − q)`` with the *probabilities* ``q`` where a
    log is expected: a bounded term.
    """
    check_choice(kind, "QTRADES loss", QTRADES_LOSSES)
    p = log_p.exp()
    if kind == "official_kl":
        return torch.where(p > 0, p * (log_p - log_q_adv.exp()), torch.zeros_like(p)).mean()
    term = soft_cross_entropy(log_q_adv, p)
    if kind == "kl":
        term = term + torch.where(p > 0, p * log_p, torch.zeros_like(p)).sum(1)
    return term.mean()


def _qtrades_step(
    model,
    optimizer,
    x,
    y,
    generator,
    *,
    lam,
    eps,
    step_size,
    kind="ce",
    form="logprob",
    amp=None,
    **_,
):
    """QTRADES on the cross-entropy head: ``CE(f(x), y) + λ·CE(p(x_adv), p(x))`` (Eq. 5).

    ``form`` is the adversary's (:func:`~clustr_lib.attacks.qtrades_adversary`): on a logits
    head the official term is this one, so ``"official"`` changes only the clipped start."""
    logits = model(x)
    x_adv = qtrades_adversary(
        model,
        x,
        eps=eps,
        step_size=step_size,
        generator=generator,
        target=logits.softmax(1),
        form=form,
    )
    loss = F.cross_entropy(logits, y) + lam * qtrades_term(
        model(x_adv).log_softmax(1), logits.log_softmax(1), kind
    )
    _update(loss, optimizer, amp)
    return loss.detach(), logits


def _trades_step(model, optimizer, x, y, generator, *, beta, eps, step_size, iters, amp=None, **_):
    """TRADES (Zhang et al. 2019): ``CE(f(x), y) + β·KL(p(x) ‖ p(x_adv))``, the adversary
    from ``iters`` signed steps on the KL starting at ``x + 0.001·N(0, 1)``."""
    model.eval()
    with torch.no_grad():
        p_clean = model(x).softmax(1)
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    x_adv = (x + 0.001 * noise).clamp(0, 1)
    eps_vec = torch.full((len(x),), eps, device=x.device, dtype=x.dtype)
    for _ in range(iters):
        x_adv.requires_grad_(True)
        with torch.enable_grad():
            kl = F.kl_div(model(x_adv).log_softmax(1), p_clean, reduction="sum")
            grad = torch.autograd.grad(kl, x_adv)[0]
        x_adv = project(x_adv.detach() + step_size * grad.sign(), x, eps_vec, "linf")
    model.train()
    logits = model(x)
    loss = F.cross_entropy(logits, y) + beta * F.kl_div(
        model(x_adv).log_softmax(1), logits.softmax(1), reduction="batchmean"
    )
    _update(loss, optimizer, amp)
    return loss.detach(), logits


def _free_at_step(model, optimizer, x, y, generator, *, replays, eps, state, amp=None, **_):
    """Free AT (Shafahi et al. 2019): ``replays`` steps on the same batch, each also
    ascending a perturbation ``δ`` carried over from batch to batch (in fp16 its gradient is
    the scaled one: the same signs, non-finite entries read as 0)."""
    delta = state.get("delta")
    if delta is None or delta.shape != x.shape:
        delta = torch.zeros_like(x)
    for _ in range(replays):
        delta.requires_grad_(True)
        logits = model((x + delta).clamp(0, 1))
        loss = F.cross_entropy(logits, y)
        _update(loss, optimizer, amp)
        grad = delta.grad
        if amp is not None and amp.scaler is not None:
            grad = torch.nan_to_num(grad, nan=0.0)
        delta = (delta.detach() + eps * grad.sign()).clamp(-eps, eps)
    state["delta"] = delta
    return loss.detach(), logits


def train_cross_entropy(
    model: nn.Module,
    data,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    milestones=(),
    seed: int = 0,
    step: str = "nominal",
    step_args=None,
    checkpoint=None,
    progress: bool | None = None,
    flip: bool | None = None,
    precision: str = "fp32",
    channels_last: bool | None = None,
) -> History:
    """Cross-entropy training with Adam, lr ×0.1 at each of ``milestones`` (App. D).

    ``step`` selects the per-batch update: ``nominal`` (the ClusTR warm start),
    ``qtrades`` (λ, ε, η, kind of :func:`qtrades_term`, adversary ``form``), ``trades``
    (β, ε, η, iterations) or ``free_at`` (replays m, ε);
    ``step_args`` holds their parameters. ``checkpoint``: a path; the run resumes from it.
    ``flip``: random horizontal flips of the batches (``None``: the data's own setting).
    ``precision``, ``channels_last``: see :class:`TrainingPrecision` (defaults: float32 as
    written; channels-last on CUDA).
    """
    check_choice(step, "training step", STEPS)
    check_choice(precision, "precision", PRECISIONS)
    check_positive(lr, "lr")
    if int(epochs) < 0 or int(batch_size) < 1:
        raise ValueError("epochs must be >= 0 and batch_size >= 1")
    step_fn = {
        "nominal": nominal_step,
        "qtrades": _qtrades_step,
        "trades": _trades_step,
        "free_at": _free_at_step,
    }[step]
    step_args = dict(step_args or {})
    if flip and isinstance(data, TensorData):
        raise ValueError("horizontal flips need images; these inputs are vectors")
    batch_kwargs = {} if flip is None else {"flip": bool(flip)}
    y_all = data.y_train
    generators = _Generators(seed, y_all.device)
    amp = TrainingPrecision(precision, y_all.device, channels_last)
    network = amp.network(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(milestones), gamma=0.1)
    carry: dict = {}

    def one_epoch():
        order = torch.randperm(len(y_all), generator=generators.cpu).to(y_all.device)
        # summed on the device in float64, read once: the same sum as Python floats of the
        # per-batch losses (exact float32 -> float64, then the same additions in order)
        total = torch.zeros((), dtype=torch.float64, device=y_all.device)
        correct = torch.zeros((), dtype=torch.long, device=y_all.device)
        for first in range(0, len(order), batch_size):
            idx = order[first : first + batch_size]
            x = data.train_batch(idx, generators.device, **batch_kwargs)
            loss, logits = step_fn(
                network,
                optimizer,
                x,
                y_all[idx],
                generators.device,
                state=carry,
                amp=amp,
                **step_args,
            )
            total += loss.double() * len(idx)
            correct += (logits.argmax(1) == y_all[idx]).sum()
        return float(total) / len(order), int(correct) / len(order)

    # what a step carries from batch to batch (Free AT's δ) goes into the checkpoint too:
    # across epochs it carries on whenever the training size divides by the batch size
    def extra_state():
        return {key: value.detach().cpu() for key, value in carry.items()}

    def restore_extra(state):
        carry.clear()
        carry.update({key: value.to(y_all.device) for key, value in state.items()})

    return _run_epochs(
        step,
        epochs,
        model,
        optimizer,
        scheduler,
        generators,
        one_epoch,
        Checkpoint(checkpoint),
        progress,
        extra_state,
        restore_extra,
        amp,
        network,
    )


# ---------------------------------------------------------------------------------------
# Magnet fine-tuning (Sec. 3.3), optionally with the QTRADES term (Eq. 5).

# Where σ² of Eq. (4) comes from at every (re)clustering (:func:`train_magnet`).
VARIANCE_SOURCES = ("assignments", "second_pass")


def _check_milestones(milestones) -> list[int]:
    """Strictly increasing positive integer epochs."""
    out = []
    for m in milestones:
        if isinstance(m, bool) or int(m) != m or int(m) < 1:
            raise ValueError(
                f"lr milestones must be positive integer epochs, got {list(milestones)}"
            )
        out.append(int(m))
    if any(b <= a for a, b in zip(out, out[1:])):
        raise ValueError(f"lr milestones must be strictly increasing, got {out}")
    return out


@torch.no_grad()
def embed_augmented(
    embedder: nn.Module, data, generator, flip=None, batch_size: int = 1024
) -> torch.Tensor:
    """Embeddings of the whole training set, each image augmented as a training batch is
    (``data.train_batch``: crop if the dataset is augmented, flip if asked), in eval mode
    without autograd (mode restored after); the official code's cluster refresh embeds its
    augmented training set this way (``compute_reps`` on the transformed ``trainset``)."""
    was_training = embedder.training
    embedder.eval()
    kwargs = {} if flip is None else {"flip": flip}
    n = len(data.y_train)
    out = torch.cat(
        [
            embedder(
                data.train_batch(
                    torch.arange(i, min(i + batch_size, n), device=data.y_train.device),
                    generator,
                    **kwargs,
                )
            )
            for i in range(0, n, batch_size)
        ]
    )
    embedder.train(was_training)
    return out


def train_magnet(
    embedder: nn.Module,
    data,
    *,
    epochs: int,
    lr: float,
    alpha: float,
    clusters_per_class: int = 2,
    clusters_per_batch: int = 12,
    samples_per_cluster: int = 20,
    seed: int = 0,
    qtrades_lambda: float = 0.0,
    qtrades_eps: float = 8 / 255,
    qtrades_step: float = 10 / 255,
    qtrades_loss: str = "ce",
    checkpoint=None,
    progress: bool | None = None,
    qtrades_form: str = "logprob",
    qtrades_adversary_grad: bool = False,
    train_num_nearest: int | None = None,
    milestones=(),
    flip: bool | None = None,
    seed_probability: str = "all_members",
    epoch_length: str = "ceil",
    drop_short_batches: bool = False,
    kmeans_random_state: int | None = None,
    kmeans_n_init: int = 1,
    kmeans_max_iter: int = 300,
    refresh_augment: bool = False,
    variance_from: str = "assignments",
    magnet_log_eps: float | None = None,
    kmeans_backend: str = "auto",
    precision: str = "fp32",
    channels_last: bool | None = None,
):
    """Magnet-loss training (Eq. 3) with neighbourhood sampling (App. D).

    Clusters come from per-class k-means++ on the embeddings of the whole training set
    (an un-augmented pass without autograd) and are recomputed at the end of every
    epoch; an epoch is as many samples as the training set holds. With
    ``qtrades_lambda = λ > 0`` the loss is ``Magnet + λ·CE(p(x_adv), p(x))`` (Eq. 5), ``p``
    the Eq. (4) probabilities over all clusters with the current centroids and ``σ²``,
    ``x_adv`` the one-step QTRADES adversary; gradients flow through both ``p``'s, as in
    TRADES (``qtrades_loss="kl"``: TRADES' KL instead, see :func:`qtrades_term`).
    Returns ``(index, history)``.

    Every default keeps that recipe; each keyword below switches one difference to the
    official code (github clustr-official-account/Rethinking-Clustering-for-Robustness,
    ``main_clustr.py``, ``utils/magnet_training.py``, ``utils/magnet_tools.py``,
    ``utils/setups.py``); the official value is in brackets.

    * ``qtrades_form`` (``"official"``): the QTRADES term ``−Σ_c p_c(x)·log_softmax(s(x_adv))_c``
      with ``s`` the raw class scores of Eq. (4) and ``p = s(x)/Σ s(x)`` from the training
      forward, not detached; the adversary from a clipped start on the same term (see
      :func:`magnet_step`, :func:`~clustr_lib.attacks.qtrades_adversary`).
    * ``qtrades_adversary_grad`` (``True``): add the adversary's own objective at its random
      start, weight 1, to the step's gradient (the official ``cost.backward()`` leaves it in
      the parameters' ``.grad`` and the training backward adds to it); not in the logged loss.
    * ``train_num_nearest`` (``10``, its ``--L``): ``L``, the clusters that enter every Eq. (4)
      evaluation during training (QTRADES target, prediction and adversary, the logged
      accuracy); ``None``: all clusters. The ``logprob`` QTRADES term needs all clusters
      (it is infinite over fewer; refused with λ > 0).
    * ``milestones`` (``[30, 60]``): lr ×0.1 at these epochs (``MultiStepLR``).
    * ``flip`` (``True`` on CIFAR-10/100): random horizontal flips of the training batches
      (``None``: the data's own setting).
    * ``seed_probability`` (``"official"``): see :class:`~clustr_lib.magnet.NeighbourhoodSampler`.
    * ``epoch_length`` (``"floor"``) and ``drop_short_batches`` (``True``): ``floor(N/(M·D))``
      batches, and a batch with fewer than ``M·D`` samples (a cluster smaller than ``D``) is
      drawn but not trained on (``drop_last=True`` of the official loader drops it).
    * ``kmeans_random_state`` (``1``): every k-means uses this state (``None``: ``seed`` plus
      the number of refreshes so far); ``kmeans_n_init`` (1 on CIFAR-10, 10 otherwise),
      ``kmeans_max_iter`` (20 on CIFAR-10, 40 otherwise).
    * ``refresh_augment`` (``True``): the initial clustering and each refresh embed the
      *augmented* training set (:func:`embed_augmented`, with ``flip``).
    * ``variance_from`` (``"second_pass"``): ``σ²`` of Eq. (4) from the k-means pass and its
      assignments (``"assignments"``), or from a second pass over the training set (augmented
      again if ``refresh_augment``), each sample to its nearest centroid of its own class.
    * ``magnet_log_eps`` (``1e-8``): the Magnet loss with ``ε`` inside the log
      (:func:`~clustr_lib.magnet.magnet_loss`), capping each sample at ``−log ε ≈ 18.42``.

    Not choices of the recipe but of the machine (none changes a CPU run):
    ``kmeans_backend`` (:class:`~clustr_lib.magnet.ClusterIndex`; ``"auto"``: torch's batched
    k-means on CUDA, scikit-learn on the CPU), ``precision`` and ``channels_last``
    (:class:`TrainingPrecision`; the clustering passes run in it too, k-means in float32).

    All options are validated before any embedding or clustering starts.
    """
    check_choice(precision, "precision", PRECISIONS)
    check_positive(lr, "lr")
    check_positive(qtrades_lambda, "qtrades_lambda", allow_zero=True)
    check_choice(qtrades_form, "QTRADES form", QTRADES_FORMS)
    check_choice(qtrades_loss, "QTRADES loss", QTRADES_LOSSES)
    if qtrades_form == "official" and qtrades_loss != "ce":
        raise ValueError(
            "the official QTRADES form is a cross-entropy term; qtrades_loss must be 'ce'"
        )
    check_choice(variance_from, "variance source", VARIANCE_SOURCES)
    check_choice(seed_probability, "seed probability", SEED_PROBABILITIES)
    check_choice(epoch_length, "epoch length", EPOCH_LENGTHS)
    milestones = _check_milestones(milestones)
    if magnet_log_eps is not None:
        check_positive(magnet_log_eps, "magnet_log_eps")
    if int(kmeans_n_init) < 1 or int(kmeans_max_iter) < 1:
        raise ValueError(
            f"kmeans_n_init and kmeans_max_iter must be >= 1, got "
            f"{kmeans_n_init}, {kmeans_max_iter}"
        )
    y_all = data.y_train
    num_classes = int(y_all.max()) + 1
    num_clusters = num_classes * int(clusters_per_class)
    if train_num_nearest is not None and not 1 <= int(train_num_nearest) <= num_clusters:
        raise ValueError(
            f"train_num_nearest (L) must be in [1, {num_clusters}] (the number of "
            f"clusters), got {train_num_nearest}"
        )
    if (
        qtrades_lambda > 0
        and qtrades_form == "logprob"
        and train_num_nearest is not None
        and int(train_num_nearest) < num_clusters
    ):
        raise ValueError(
            f"qtrades_form='logprob' needs Eq. (4) over all {num_clusters} clusters "
            f"(train_num_nearest=None): over the L={train_num_nearest} nearest, a class of p(x) "
            f"can have no cluster among x_adv's L nearest and CE(p(x_adv), p(x)) is infinite; "
            f"only the official form (raw scores) is finite there"
        )
    if flip and isinstance(data, TensorData):
        raise ValueError("horizontal flips need images; these inputs are vectors")
    batch_kwargs = {} if flip is None else {"flip": bool(flip)}
    generators = _Generators(seed, y_all.device)
    random_state = seed if kmeans_random_state is None else int(kmeans_random_state)
    index = ClusterIndex(
        clusters_per_class,
        random_state=random_state,
        n_init=kmeans_n_init,
        max_iter=kmeans_max_iter,
        fixed_random_state=kmeans_random_state is not None,
        kmeans_backend=kmeans_backend,
    )
    amp = TrainingPrecision(precision, y_all.device, channels_last)
    network = amp.network(embedder)

    def cluster_passes():
        """Embeddings for k-means and, if separate, for σ²."""
        if refresh_augment:
            feats = embed_augmented(network, data, generators.device, flip)
            if variance_from == "second_pass":
                return feats, embed_augmented(network, data, generators.device, flip)
            return feats, None
        feats = embed_all(network, data.train_images())
        return feats, feats if variance_from == "second_pass" else None

    with amp.flags():
        feats, var_feats = cluster_passes()
        index.fit(feats, y_all.cpu(), variance_embeddings=var_feats)
    sampler = NeighbourhoodSampler(
        index,
        clusters_per_batch,
        samples_per_cluster,
        seed=seed,
        seed_probability=seed_probability,
        epoch_length=epoch_length,
    )
    optimizer = torch.optim.Adam(embedder.parameters(), lr=lr)
    scheduler = (
        torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=0.1)
        if milestones
        else None
    )

    def one_epoch():
        # summed on the device, read once per epoch (float64: the same sum as Python floats)
        total = torch.zeros((), dtype=torch.float64, device=y_all.device)
        correct = torch.zeros((), dtype=torch.long, device=y_all.device)
        seen, trained = 0, 0
        classifier = ClusterClassifier(
            index.centroids_,
            index.centroid_classes_,
            index.variance_,
            num_nearest=train_num_nearest,
            num_classes=index.num_classes_,
        )
        for batch in sampler:
            if drop_short_batches and len(batch.indices) < sampler.batch_size:
                continue
            idx = torch.from_numpy(batch.indices).to(y_all.device, non_blocking=True)
            x, y = data.train_batch(idx, generators.device, **batch_kwargs), y_all[idx]
            cluster_ids = torch.from_numpy(batch.cluster_ids).to(y_all.device, non_blocking=True)
            loss, per_sample, log_p = magnet_step(
                network,
                optimizer,
                classifier,
                x,
                y,
                cluster_ids,
                alpha=alpha,
                qtrades_lambda=qtrades_lambda,
                qtrades_eps=qtrades_eps,
                qtrades_step=qtrades_step,
                qtrades_loss=qtrades_loss,
                generator=generators.device,
                qtrades_form=qtrades_form,
                adversary_grad=qtrades_adversary_grad,
                log_eps=magnet_log_eps,
                amp=amp,
            )
            # the next batch's seed cluster depends on these losses (NumPy's stream): the
            # one read-back per step that the sampler's recipe needs
            sampler.record_losses(batch.indices, per_sample)
            total += loss.double()
            correct += (log_p.argmax(1) == y).sum()
            seen += len(y)
            trained += 1
        feats, var_feats = cluster_passes()
        index.refresh(feats, variance_embeddings=var_feats)
        return float(total) / max(trained, 1), int(correct) / max(seen, 1)

    def extra_state():
        return {
            "centroids": index.centroids_.cpu(),
            "assignments": index.assignments_,
            "variance": index.variance_,
            "refreshes": index.refreshes_,
            "sample_losses": torch.from_numpy(sampler.sample_losses),
            "has_loss": torch.from_numpy(sampler.has_loss),
            "cluster_losses": torch.from_numpy(sampler.stored_cluster_losses),
            "sampler_rng": json.dumps(sampler.rng.bit_generator.state),
        }

    def restore_extra(state):
        index.centroids_ = state["centroids"].to(y_all.device)
        index.assignments_ = state["assignments"]
        index.variance_ = float(state["variance"])
        index.refreshes_ = int(state["refreshes"])
        sampler.sample_losses = state["sample_losses"].numpy().copy()
        if "has_loss" in state:
            sampler.has_loss = state["has_loss"].numpy().copy()
            sampler.stored_cluster_losses = state["cluster_losses"].numpy().copy()
        sampler.rng.bit_generator.state = json.loads(state["sampler_rng"])
        sampler.forget_members()  # the cached cluster membership is stale

    history = _run_epochs(
        "magnet",
        epochs,
        embedder,
        optimizer,
        scheduler,
        generators,
        one_epoch,
        Checkpoint(checkpoint),
        progress,
        extra_state,
        restore_extra,
        amp,
        network,
    )
    return index, history


def official_qtrades_term(scores_adv: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """The official QTRADES term: batch mean of ``−Σ_c p_c · log_softmax(s(x_adv))_c``.

    ``scores_adv``: the raw, unnormalised Eq. (4) class scores at ``x_adv`` (values in
    ``[0, K]``, so ``log_softmax`` of them is close to uniform); ``p``: the clean input's
    :func:`~clustr_lib.classify.normalised_scores`, *not* detached (``cross_ent(probs,
    adv_scores)`` in the official utils/magnet_training.py).
    """
    return soft_cross_entropy(scores_adv.log_softmax(1), p).mean()


def magnet_step(
    embedder,
    optimizer,
    classifier,
    x,
    y,
    cluster_ids,
    *,
    alpha,
    qtrades_lambda=0.0,
    qtrades_eps=8 / 255,
    qtrades_step=10 / 255,
    qtrades_loss="ce",
    generator=None,
    qtrades_form="logprob",
    adversary_grad=False,
    log_eps=None,
    amp=None,
):
    """One Magnet (± QTRADES) update on a neighbourhood batch; returns ``(loss, per-sample
    Magnet losses, Eq. (4) log-probabilities of the batch)``, the loss a detached 0-d tensor.

    ``qtrades_form="logprob"``: ``λ·CE(p(x_adv), p(x))`` on Eq. (4)'s log-probabilities
    (:func:`qtrades_term`; infinite wherever a class of ``p(x)`` has no cluster among
    ``x_adv``'s nearest, so :func:`train_magnet` uses it over all clusters only).
    ``"official"``: ``λ·``:func:`official_qtrades_term` with ``p = normalised_scores(s(x))``
    from this forward. ``adversary_grad`` adds the
    adversary's objective at its start to the backward (not to the returned loss).
    ``log_eps``: see :func:`~clustr_lib.magnet.magnet_loss`.

    The QTRADES adversary reuses the training forward's ``p(x)`` and needs only an input
    gradient, so the step costs two forward-backward passes plus one input-gradient pass.

    The step runs with autocast off (:func:`~clustr_lib.magnet.exact_float32`), even inside a
    caller's autocast: the Magnet loss, Eq. (4), the QTRADES term and their distances are
    float32 as written, and only a network made by :meth:`TrainingPrecision.network` runs its
    own forward passes in half precision. ``amp``: the run's precision (its gradient scaler).
    """
    with exact_float32(x.device):
        loss, per_sample, log_p, extra = _magnet_objective(
            embedder,
            classifier,
            x,
            y,
            cluster_ids,
            alpha,
            qtrades_lambda,
            qtrades_eps,
            qtrades_step,
            qtrades_loss,
            generator,
            qtrades_form,
            adversary_grad,
            log_eps,
        )
        _update(loss if extra is None else loss + extra, optimizer, amp)
    return loss.detach(), per_sample, log_p


def _magnet_objective(
    embedder,
    classifier,
    x,
    y,
    cluster_ids,
    alpha,
    qtrades_lambda,
    qtrades_eps,
    qtrades_step,
    qtrades_loss,
    generator,
    qtrades_form,
    adversary_grad,
    log_eps,
):
    """:func:`magnet_step`'s loss, per-sample losses, log-probabilities and the adversary's
    start objective (``None`` unless ``adversary_grad``)."""
    features = embedder(x)
    features = features.float() if features.dtype in (torch.bfloat16, torch.float16) else features
    loss, per_sample, _ = magnet_loss(features, cluster_ids, y, alpha, log_eps=log_eps)
    log_p = classifier.log_proba(features)
    extra = None
    if qtrades_lambda > 0:
        soft_model = ClusterModel(embedder, classifier)
        if qtrades_form == "official":
            p = normalised_scores(classifier.scores(features))
        else:
            p = log_p.exp()
        adv = qtrades_adversary(
            soft_model,
            x,
            eps=qtrades_eps,
            step_size=qtrades_step,
            generator=generator,
            target=p,
            form=qtrades_form,
            return_start_loss=adversary_grad,
        )
        x_adv, extra = adv if adversary_grad else (adv, None)
        if qtrades_form == "official":
            term = official_qtrades_term(soft_model.scores(x_adv), p)
        else:
            term = qtrades_term(soft_model(x_adv), log_p, qtrades_loss)
        loss = loss + qtrades_lambda * term
    return loss, per_sample, log_p, extra


def cluster_model(
    embedder: nn.Module, index: ClusterIndex, num_nearest: int | None = None
) -> ClusterModel:
    """The Eq. (4) model of a trained embedder: its final clusters and training-set ``σ²``."""
    classifier = ClusterClassifier(
        index.centroids_,
        index.centroid_classes_,
        index.variance_,
        num_nearest=num_nearest,
        num_classes=index.num_classes_,
    )
    return ClusterModel(embedder, classifier)


def seed_everything(seed: int) -> None:
    """Seed PyTorch and NumPy's global generators (model initialisation)."""
    torch.manual_seed(seed)
    np.random.seed(seed)
