"""Attacks (Sec. 4.2): PGD under ℓ∞/ℓ2 with restarts and a selectable objective, the
QTRADES adversary (Eq. 5), and AutoAttack through ``pyautoattack``.

Inputs live in ``[0, 1]`` pixel space; models normalise internally. A model is
either a plain network returning logits (the baselines) or a
:class:`~clustr_lib.classify.ClusterModel` (Eq. 4), whose ``forward`` returns
log-probabilities.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from pyautoattack import AutoAttack
from torch import nn

from .checks import as_label_tensor, check_choice, check_positive
from .classify import ClusterModel, normalised_scores
from .magnet import magnet_loss_fixed_clusters

OBJECTIVES = ("paper", "ce", "margin", "magnet")
NORMS = ("linf", "l2")
# When PGD counts a point as broken (:func:`pgd`), from the weakest to the strongest:
PGD_RULES = ("official", "any_restart", "any_iterate")


def attack_objective(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, objective: str, alpha: float | None = None
) -> torch.Tensor:
    """``[N]`` per-sample loss that an attack maximises.

    * ``paper``: ``F.cross_entropy`` on the *unnormalised* class scores of Eq. (4),
      i.e. ``−log softmax(scores)_y``, as the public evaluation code does. For a
      plain logits model it is the ordinary cross-entropy (the paper's baselines).
    * ``ce``: ``−log p_y`` (on Eq. 4's log-probabilities, or on logits).
    * ``margin``: ``max_{j≠y} z_j − z_y`` with ``z`` the log-probabilities or logits.
    * ``magnet``: the adaptive attack, the Magnet loss of ``f(x)`` against the fixed
      training clusters and ``σ²`` (needs a ClusterModel and ``alpha``).
    """
    return objective_and_prediction(model, x, y, objective, alpha)[0]


def objective_and_prediction(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, objective: str, alpha: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`attack_objective` and the ``[N]`` predicted classes from the same forward pass
    (what PGD needs at every iterate: one network forward instead of two)."""
    check_choice(objective, "objective", OBJECTIVES)
    if objective == "magnet":
        if not isinstance(model, ClusterModel):
            raise ValueError("the magnet objective needs a ClusterModel")
        if alpha is None:
            raise ValueError("the magnet objective needs alpha (the Magnet loss margin)")
    if isinstance(model, ClusterModel):
        clf = model.classifier
        f = model.embed(x)
        z = clf.log_proba(f)  # the model's output: Eq. (4)'s log-probabilities
        if objective == "magnet":
            loss = magnet_loss_fixed_clusters(
                f, y, clf.centroids, clf.centroid_classes, clf.variance, alpha
            )
            return loss, z.argmax(1)
        if objective == "paper":
            return F.cross_entropy(clf.scores(f), y, reduction="none"), z.argmax(1)
    else:
        z = model(x)
    if objective in ("paper", "ce"):
        return -z.log_softmax(1).gather(1, y[:, None]).squeeze(1), z.argmax(1)
    true = z.gather(1, y[:, None]).squeeze(1)
    other = z.scatter(1, y[:, None], float("-inf")).max(1).values
    return other - true, z.argmax(1)


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: torch.Tensor, norm: str) -> torch.Tensor:
    """Project onto the ε-ball around ``x`` (``eps`` shaped ``[N]``), then into ``[0, 1]``.

    Clipping into the box only shrinks each coordinate of the perturbation, so the
    result stays inside the ball.
    """
    delta = x_adv - x
    shape = (-1,) + (1,) * (x.ndim - 1)
    if norm == "linf":
        bound = eps.view(shape)
        delta = torch.maximum(torch.minimum(delta, bound), -bound)
    else:
        norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
        delta = delta * (eps / norms).clamp(max=1.0).view(shape)
    return (x + delta).clamp(0.0, 1.0)


def _random_start(x, eps, norm, generator):
    shape = (-1,) + (1,) * (x.ndim - 1)
    if norm == "linf":
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return x + (2.0 * noise - 1.0) * eps.view(shape)
    direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    direction = direction / direction.flatten(1).norm(dim=1).clamp_min(1e-12).view(shape)
    radius = torch.rand(x.shape[0], generator=generator, device=x.device, dtype=x.dtype)
    radius = eps * radius ** (1.0 / x[0].numel())
    return x + direction * radius.view(shape)


def _ascent_step(grad, step_size, norm):
    grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
    if norm == "linf":
        return step_size * grad.sign()
    shape = (-1,) + (1,) * (grad.ndim - 1)
    return step_size * grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(shape)


@contextlib.contextmanager
def evaluating(model: nn.Module):
    """Put ``model`` in eval mode for the block and restore its mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """``[N]`` predicted classes, in batches."""
    return torch.cat([model(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


@dataclass
class AttackResult:
    """Outcome of an attack on a batch.

    ``robust[i]`` is true when point ``i`` is classified correctly before the attack
    and after *every* restart; ``x_adv`` holds, per point, a breaking input if any
    restart found one (else the last restart's). ``broken_by_restart`` is ``[R, N]``.
    With ``trace``, ``loss_trace`` and ``correct_trace`` are ``[steps + 1, R, N]``.
    """

    x_adv: torch.Tensor
    clean_correct: torch.Tensor
    robust: torch.Tensor
    broken_by_restart: torch.Tensor
    loss_trace: torch.Tensor | None = None
    correct_trace: torch.Tensor | None = None
    extra: dict = field(default_factory=dict)

    @property
    def clean_accuracy(self) -> float:
        return float(self.clean_correct.float().mean())

    @property
    def robust_accuracy(self) -> float:
        return float(self.robust.float().mean())


def _check_attack_inputs(x, y, eps, norm):
    check_choice(norm, "norm", NORMS)
    if not torch.is_tensor(x) or not x.is_floating_point():
        raise TypeError("x must be a floating tensor of inputs in [0, 1]")
    finite = torch.isfinite(x)
    if not bool(finite.all()):  # NaN compares false with both bounds below
        raise ValueError(
            f"inputs must be finite and lie in [0, 1]: {int((~finite).sum())} of {x.numel()} "
            f"values are NaN or infinite"
        )
    if x.numel() and (float(x.min()) < 0.0 or float(x.max()) > 1.0):
        raise ValueError("inputs must lie in [0, 1]; models normalise internally")
    y = as_label_tensor(y, "y", x.shape[0]).to(x.device)
    eps = torch.as_tensor(eps, dtype=x.dtype, device=x.device)
    if eps.ndim == 0:
        eps = eps.expand(x.shape[0])
    if eps.shape != (x.shape[0],):
        raise ValueError(f"eps must be a scalar or shaped [{x.shape[0]}], got {tuple(eps.shape)}")
    if not bool(torch.isfinite(eps).all()) or float(eps.min()) < 0:
        raise ValueError("eps must be finite and >= 0")
    return y, eps


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y,
    *,
    eps,
    step_size: float,
    steps: int,
    restarts: int = 1,
    norm: str = "linf",
    objective: str = "ce",
    alpha: float | None = None,
    random_start: bool = True,
    seed: int | None = 0,
    restarts_per_pass: int | None = None,
    report_steps=None,
    prune: bool = True,
    trace: bool = False,
    rule: str = "any_restart",
) -> AttackResult:
    """Projected gradient ascent (Madry et al.; the paper's PGD₂₀/PGD₁₀₀, Sec. 4.2).

    ``x_{k+1} = Π(x_k + η · sign ∇ℓ)`` under ℓ∞ (``η · ∇ℓ/‖∇ℓ‖`` under ℓ2), with Π the
    projection onto the ε-ball ∩ ``[0, 1]``. Each restart starts from a uniform point of
    the ball (``random_start``). A point misclassified before the attack is never robust.
    When a point counts as broken is the ``rule`` (:data:`PGD_RULES`):

    * ``"any_restart"``: some restart's iterate at ``steps`` is misclassified;
    * ``"any_iterate"``: some iterate ``≤ steps`` of some restart is misclassified (the
      strongest reading, the standard for reporting robustness);
    * ``"official"``: as the official evaluation code does it — within a restart a point
      stops being updated once it is misclassified, and of the restarts the one with the
      **largest objective** at ``steps`` is kept; the point is broken if that one is
      misclassified (so a correctly classified restart with a larger loss hides a break).

    Robust accuracy under ``any_iterate`` ≤ ``any_restart``; ``official`` can exceed both.

    Restarts run side by side in the batch dimension, ``restarts_per_pass`` at a time
    (all by default). With ``prune``, a later pass attacks only the points that are
    still robust: the result is the same rule, at a fraction of the cost for weak models
    (not under ``official``, where a later restart can still change the kept one). Within a
    pass, under ``official`` and ``any_iterate``, a point is no longer computed once it is
    broken, whose result cannot change any more (:func:`_pgd_pass`).

    ``report_steps`` (default ``(steps,)``) lists iterations at which robustness is also
    read off the *same* runs: PGD-20 is the first 20 iterations of PGD-100 with the same
    starts, so ``steps=100, report_steps=(20, 100)`` gives both. A point is pruned only
    once it is broken at every reported iteration. ``extra["robust_at"]`` maps each
    reported iteration to the ``[N]`` robust mask.

    Args:
        model: logits model or :class:`~clustr_lib.classify.ClusterModel`; run in
            eval mode for the attack, its mode restored afterwards.
        x: ``[N, ...]`` inputs in ``[0, 1]``; y: ``[N]`` labels.
        eps: radius, a scalar or ``[N]``; step_size: η; steps: iterations.
        objective: see :func:`attack_objective`; alpha: for ``"magnet"``.
        seed: seed of the random starts (``None``: the global generator).
        trace: record the loss and correctness of every iterate, ``[steps + 1, R, N]``
            (attacks every point in every restart: no pruning).
        rule: when a point counts as broken (see above).
    """
    y, eps = _check_attack_inputs(x, y, eps, norm)
    check_choice(objective, "objective", OBJECTIVES)
    check_choice(rule, "PGD rule", PGD_RULES)
    step_size = check_positive(step_size, "step_size")
    if int(steps) < 0 or int(restarts) < 1:
        raise ValueError("steps must be >= 0 and restarts >= 1")
    steps, restarts = int(steps), int(restarts)
    report_steps = sorted(set(report_steps or ())) or [steps]
    if report_steps[-1] != steps or report_steps[0] < 0:
        raise ValueError(f"report_steps must lie in [0, steps] and include steps={steps}")
    per_pass = (
        restarts if restarts_per_pass is None else max(1, min(int(restarts_per_pass), restarts))
    )
    prune = prune and not trace and rule != "official"
    generator = None
    if seed is not None:
        generator = torch.Generator(device=x.device)
        generator.manual_seed(int(seed))

    n = x.shape[0]
    broken_at = {t: torch.zeros(n, dtype=torch.bool, device=x.device) for t in report_steps}
    kept_loss = {t: torch.full((n,), float("-inf"), device=x.device) for t in report_steps}
    broken_by_restart = torch.zeros(restarts, n, dtype=torch.bool, device=x.device)
    x_best = x.clone()
    losses, corrects = [], []
    with evaluating(model):
        clean_correct = predict(model, x) == y
        for first in range(0, restarts, per_pass):
            count = min(per_pass, restarts - first)
            done = torch.stack(list(broken_at.values())).all(0) | ~clean_correct
            idx = torch.nonzero(~done).squeeze(1) if prune else torch.arange(n, device=x.device)
            if len(idx) == 0:
                break
            run = _pgd_pass(
                model,
                x[idx],
                y[idx],
                eps[idx],
                count,
                step_size,
                steps,
                norm,
                objective,
                alpha,
                random_start,
                generator,
                report_steps,
                trace,
                rule,
            )
            for t, broken in run["broken"].items():  # [count, len(idx)]
                if rule == "official":  # keep, per point, the restart with the largest loss
                    for r in range(count):  # (ties: the later, as officially)
                        take = run["loss_at"][t][r] >= kept_loss[t][idx]
                        kept_loss[t][idx] = torch.where(
                            take, run["loss_at"][t][r], kept_loss[t][idx]
                        )
                        broken_at[t][idx] = torch.where(take, broken[r], broken_at[t][idx])
                        if t == steps:
                            x_best[idx[take]] = run["final"][r][take]
                else:
                    broken_at[t][idx] |= broken.any(0)
            final = run["broken"][steps]
            broken_by_restart[first : first + count, idx] = final
            if rule != "official":
                hit = final.any(0) & ~broken_by_restart[:first, idx].any(0)
                first_hit = final.float().argmax(0)
                x_best[idx[hit]] = run["final"][first_hit[hit], torch.nonzero(hit).squeeze(1)]
            if trace:
                losses.append(run["loss"])
                corrects.append(run["correct"])
    robust_at = {t: clean_correct & ~broken_at[t] for t in report_steps}
    return AttackResult(
        x_adv=x_best,
        clean_correct=clean_correct,
        robust=robust_at[steps],
        broken_by_restart=broken_by_restart,
        loss_trace=torch.cat(losses, 1) if trace else None,
        correct_trace=torch.cat(corrects, 1) if trace else None,
        extra={"robust_at": robust_at, "rule": rule},
    )


def _pgd_pass(
    model,
    x,
    y,
    eps,
    count,
    step_size,
    steps,
    norm,
    objective,
    alpha,
    random_start,
    generator,
    report_steps,
    trace,
    rule="any_restart",
):
    """``count`` restarts side by side on ``x``: whether each is broken at each reported step
    under ``rule`` (and, for ``official``, its objective there), and the final iterates.

    Each iterate costs one forward and one backward pass: the prediction comes from the
    forward that gives the objective (:func:`objective_and_prediction`). Under ``official``
    and ``any_iterate`` (without ``trace``) only the *active* points are computed: a point
    leaves once it is broken, because its result can no longer change — under ``official``
    it is frozen (the official code stops updating it, so it stays misclassified with the
    objective it had then), under ``any_iterate`` it counts as broken at every later iterate.
    Its final iterate is the one that broke it."""
    x_rep, y_rep, eps_rep = (t.repeat((count,) + (1,) * (t.ndim - 1)) for t in (x, y, eps))
    x_adv = _random_start(x_rep, eps_rep, norm, generator) if random_start else x_rep.clone()
    x_adv = project(x_adv, x_rep, eps_rep, norm)
    every_step = rule != "any_restart"  # both other rules look at every iterate
    freeze = every_step and not trace  # broken points leave the active set
    total = len(y_rep)
    active = torch.arange(total, device=x.device)  # the points still attacked
    ever_broken = torch.zeros(total, dtype=torch.bool, device=x.device)
    frozen_loss = torch.zeros(total, device=x.device)  # official: objective where it froze
    broken, loss_at, loss_log, correct_log = {}, {}, [], []
    for step in range(steps + 1):
        if len(active) == 0:  # every point is broken: the later reports are as they are now
            for t in (t for t in report_steps if t >= step):
                broken[t] = ever_broken.clone().view(count, -1)
                if rule == "official":
                    loss_at[t] = frozen_loss.clone().view(count, -1)
            break
        report = step in report_steps
        x_now, y_now = x_adv[active], y_rep[active]
        loss = grad = None
        if step < steps or trace or (rule == "official" and report):
            x_now.requires_grad_(True)
            with torch.enable_grad():
                loss, predicted = objective_and_prediction(model, x_now, y_now, objective, alpha)
                if step < steps:
                    grad = torch.autograd.grad(loss.sum(), x_now)[0]
            loss, x_now = loss.detach().float(), x_now.detach()
        else:
            predicted = predict(model, x_now)
        wrong = predicted != y_now  # of the active points
        if every_step:
            ever_broken[active] = ever_broken[active] | wrong
        if report:
            now = ever_broken
            if rule == "any_restart":
                now = torch.zeros_like(ever_broken).index_put_((active,), wrong)
            broken[step] = now.clone().view(count, -1)
        if rule == "official" and freeze:  # the objective a point keeps once it is frozen
            frozen_loss[active[wrong]] = loss[wrong]
        if rule == "official" and report:
            loss_at[step] = frozen_loss.clone().index_put_((active,), loss).view(count, -1)
        if trace:  # every point is active
            loss_log.append(loss.view(count, -1))
            correct_log.append(~wrong.view(count, -1))
        if grad is None:
            continue
        stepped = project(
            x_now + _ascent_step(grad, step_size, norm), x_rep[active], eps_rep[active], norm
        )
        if rule == "official" or freeze:  # a broken point keeps the iterate that broke it
            stepped = torch.where(wrong.view((-1,) + (1,) * (x_now.ndim - 1)), x_now, stepped)
        x_adv[active] = stepped
        if freeze:
            active = active[~wrong]
    run = {"broken": broken, "loss_at": loss_at, "final": x_adv.view((count,) + tuple(x.shape))}
    if trace:
        run["loss"], run["correct"] = torch.stack(loss_log), torch.stack(correct_log)
    return run


def soft_cross_entropy(log_q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``[N]`` ``−Σ_c p_c log q_c``; classes with ``p_c = 0`` contribute 0 even where
    ``log q_c = −∞``."""
    return -torch.where(p > 0, p * log_q, torch.zeros_like(log_q)).sum(1)


# The QTRADES consistency term and its adversary (:func:`qtrades_adversary`,
# :func:`clustr_lib.train.train_magnet`): ``logprob`` = Eq. (5) on Eq. (4)'s probabilities,
# ``official`` = as the official code trains it (utils/magnet_training.py).
QTRADES_FORMS = ("logprob", "official")


def qtrades_adversary(
    model: nn.Module,
    x: torch.Tensor,
    *,
    eps: float,
    step_size: float,
    generator: torch.Generator | None = None,
    target: torch.Tensor | None = None,
    form: str = "logprob",
    return_start_loss: bool = False,
):
    """The QTRADES adversary of Sec. 4.2 / App. D (one signed step).

    ``form="logprob"`` (default): ``x' = x + U(−ε, ε)``, then
    ``x_adv = Π(x' + η · sign ∇_{x'} CE(p(x'), p(x)))`` with ``p(x)`` held fixed as the soft
    target, Π the projection onto the ε-ball around ``x`` clipped to ``[0, 1]``; ``p`` is
    ``softmax(model(x))``: Eq. (4) for a ClusterModel, the softmax of the logits for a
    cross-entropy network.

    ``form="official"`` (``attack_instances_consistency`` with ``iterations=1, rand=True`` in
    the official utils/magnet_training.py): the start is clipped, ``x' = clip_[0,1](x + U(−ε, ε))``,
    and the objective is ``−Σ_c p_c(x) · log_softmax(s(x'))_c`` with ``s`` the *raw,
    unnormalised* class scores of Eq. (4) (:meth:`ClusterModel.scores`: sums of
    ``exp(−d/2σ²)`` over the class's clusters among the D nearest) and ``p(x)`` their
    normalisation (:func:`~clustr_lib.classify.normalised_scores`); for a cross-entropy
    network ``s`` is the logits (so only the clipped start differs from ``logprob``).

    Only the input gradient is computed, and the model's mode is left as the caller set it
    (training mode during training). The public code uses ``η = 10/255`` at ``ε = 8/255``.
    ``target`` (optional) passes ``p(x)`` when the caller has it already (the training
    forward), saving a forward pass; it is detached here.

    ``return_start_loss``: also return the batch mean of the objective at ``x'``, with its
    graph, so that a caller can add its parameter gradient to the training step (the official
    code's ``cost.backward()`` leaves it in the parameters' ``.grad``, and the training step's
    backward adds to it). Returns ``x_adv`` or ``(x_adv, start_loss)``.
    """
    check_choice(form, "QTRADES form", QTRADES_FORMS)
    eps = check_positive(eps, "eps", allow_zero=True)
    step_size = check_positive(step_size, "step_size")
    official = form == "official"

    def prediction(inputs):  # log q at ``inputs``
        if official and isinstance(model, ClusterModel):
            return model.scores(inputs).log_softmax(1)
        return model(inputs).log_softmax(1)

    if target is None:
        with torch.no_grad():
            if official and isinstance(model, ClusterModel):
                target = normalised_scores(model.scores(x))
            else:
                target = model(x).softmax(1)
    target = target.detach()
    noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    x_start = x + (2.0 * noise - 1.0) * eps
    if official:
        x_start = x_start.clamp(0.0, 1.0)
    x_start = x_start.requires_grad_(True)
    with torch.enable_grad():
        per_sample = soft_cross_entropy(prediction(x_start), target)
        grad = torch.autograd.grad(per_sample.sum(), x_start, retain_graph=return_start_loss)[0]
    eps_vec = torch.full((x.shape[0],), eps, dtype=x.dtype, device=x.device)
    x_adv = project(x_start.detach() + _ascent_step(grad, step_size, "linf"), x, eps_vec, "linf")
    if return_start_loss:
        return x_adv, per_sample.mean()
    return x_adv


class FiniteLogits(nn.Module):
    """Wraps a model so that ``−∞`` log-probabilities become a finite floor.

    AutoAttack's DLR and FAB losses take differences of logits; a class outside the
    D nearest clusters (log-probability ``−∞``) would make them NaN. The floor
    (``−1000`` by default, i.e. probability ``e^{−1000}``) changes no prediction.
    """

    def __init__(self, model: nn.Module, floor: float = -1000.0):
        super().__init__()
        self.model = model
        self.floor = float(floor)

    def forward(self, x):
        return self.model(x).clamp_min(self.floor)


STANDARD_AUTOATTACK = ("apgd-ce", "apgd-t", "fab-t", "square")


def autoattack(
    model: nn.Module,
    x: torch.Tensor,
    y,
    *,
    eps: float,
    norm: str = "linf",
    batch_size: int = 250,
    seed: int = 0,
    attacks=STANDARD_AUTOATTACK,
    log_level: int = logging.WARNING,
) -> AttackResult:
    """AutoAttack, standard version (APGD-CE, APGD-T, FAB-T, Square), via ``pyautoattack``.

    The attacks run in sequence, each on the points still robust, with the
    standard version's settings; the robust accuracy after each attack is returned
    in ``extra["robust_after"]``. A ClusterModel's log-probabilities serve as the
    logits (see :class:`FiniteLogits`); ``extra["robust_masks"]`` holds the ``[N]`` robust
    mask after each.
    """
    y, eps_vec = _check_attack_inputs(x, y, eps, norm)
    unknown = set(attacks) - set(STANDARD_AUTOATTACK)
    if unknown:
        raise ValueError(f"unknown AutoAttack attacks {sorted(unknown)}")
    wrapped = FiniteLogits(model)
    logging.getLogger("auto-attack").setLevel(log_level)
    with evaluating(model):
        clean_correct = predict(wrapped, x) == y
        num_classes = wrapped(x[:1]).shape[1]
        if num_classes < 4 and {"apgd-t", "fab-t"} & set(attacks):
            raise ValueError(
                f"the targeted attacks (DLR loss) need >= 4 classes, the model "
                f"has {num_classes}; pass attacks=('apgd-ce', 'square')"
            )
        runner = AutoAttack(
            wrapped,
            eps=float(eps),
            norm={"linf": "Linf", "l2": "L2"}[norm],
            version="standard",
            seed=seed,
            device=x.device,
        )
        runner.apgd_targeted.n_target_classes = min(9, num_classes - 1)
        runner.fab.n_target_classes = min(9, num_classes - 1)
        robust = clean_correct.clone()
        x_adv = x.clone()
        robust_after = {"clean": float(robust.float().mean())}
        masks = {"clean": robust.clone()}
        for name in attacks:
            todo = torch.nonzero(robust).squeeze(1)
            if len(todo):
                runner.attacks_to_run = [name]
                adv, _ = runner.run_standard_evaluation(x[todo], y[todo], batch_size=batch_size)
                fooled = predict(wrapped, adv) != y[todo]
                robust[todo[fooled]] = False
                x_adv[todo[fooled]] = adv[fooled]
            robust_after[name] = float(robust.float().mean())
            masks[name] = robust.clone()
    return AttackResult(
        x_adv=x_adv,
        clean_correct=clean_correct,
        robust=robust,
        broken_by_restart=(~robust & clean_correct)[None],
        extra={"robust_after": robust_after, "robust_masks": masks},
    )
