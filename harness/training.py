"""Assemble what one run trains, and train it: the suite toolkit's `fit`.

`assemble` turns a run's training methods (the `MethodRef`s of kinds whose methods train) into
a model and the parts the engine calls (harness.seams roles), in a fixed order:

1. the model is built (the caller seeds torch first: that is the initialisation);
2. methods whose kind's interface is a `Transform` (augmentations) are built with the run's
   context and shape the model first (a transform may widen the head to joint labels);
3. the other methods are built with the context of the label space the objective trains on
   (K x m when a transform has `label_multiplier = m`), then shape the model in entry order;
4. parts are composed (harness.engine.compose refuses two owners of one role);
5. auxiliary models are made: peers (built and shaped like the model, seeded from the run's
   seed and their name) and teachers (trained once as artifacts by the toolkit's `fit`).

`check_entry` makes the composition check before any training, from the classes methods'
`build` return.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from harness.engine import AuxModel, Composition, CompositionError, Normalizer, TrainLog, compose, predict, train
from harness.errors import HarnessError
from harness.method import MethodRef
from harness.seams import (
    SINGLE_OWNER_ROLES,
    AuxiliaryModels,
    ModelShaper,
    Objective,
    Peer,
    Predictor,
    Role,
    Sampler,
    StepOwner,
    Teacher,
    TrainContext,
    Transform,
    UpdateRule,
    roles_of,
)

if TYPE_CHECKING:
    from harness.catalog import Catalog
    from harness.suite import RunContext


@dataclass
class TrainingPlan:
    """A model ready to train and the composed parts of its methods."""

    model: nn.Module
    composition: Composition
    aux: dict[str, AuxModel]
    context: TrainContext  # the objective's context (label space after transforms)
    names: tuple[str, ...]


def is_transform_kind(catalog: Catalog, kind: str) -> bool:
    return issubclass(catalog.kinds.get(kind).interface, Transform)


def _build(catalog: Catalog, ref: MethodRef, ctx: TrainContext) -> Any:
    kind = catalog.kinds.get(ref.kind)
    method = catalog.methods.get(ref.name)
    obj = method.build(kind.context(ctx), **ref.hyperparameters)
    if not isinstance(obj, kind.interface):
        raise TypeError(f"method {ref.name!r} built a {type(obj).__name__}; a {ref.kind} method must return a {kind.interface.__module__}.{kind.interface.__name__}")
    return obj


def peer_seed(seed: int, name: str) -> int:
    """The initialisation seed of a peer network: a function of the run's seed and the peer's name."""
    return int.from_bytes(hashlib.sha256(f"harness/peer/{name}/{seed}".encode()).digest()[:4], "little")


def assemble(
    catalog: Catalog,
    refs: Sequence[MethodRef],
    *,
    context: TrainContext,
    build_model: Callable[[], nn.Module],
    model: nn.Module | None = None,
    extra_parts: Sequence[Role] = (),
    extra_names: Sequence[str] = (),
    teacher: Callable[[str, Teacher], nn.Module] | None = None,
) -> TrainingPlan:
    """Build the model (unless `model` is given: then it is trained as it is, not reshaped) and
    the parts of `refs` (training methods) plus `extra_parts` a suite adds (a continual strategy).

    Raises CompositionError (a HarnessError) for methods that cannot train together.
    """
    transform_refs = [r for r in refs if is_transform_kind(catalog, r.kind)]
    other_refs = [r for r in refs if not is_transform_kind(catalog, r.kind)]
    reshape = model is None
    model = build_model() if model is None else model
    transforms = [_build(catalog, r, context) for r in transform_refs]
    shapers: list[tuple[ModelShaper, TrainContext]] = []  # in the order they shape, with the context they shape with
    for obj in transforms:
        if isinstance(obj, ModelShaper):
            shapers.append((obj, context))
            if reshape:
                model = obj.shape_model(model, context)
    multiplier = 1
    for obj in transforms:
        multiplier *= int(obj.label_multiplier)
    objective_ctx = context.with_label_multiplier(multiplier)
    others = [_build(catalog, r, objective_ctx) for r in other_refs]
    for obj in others:
        if isinstance(obj, ModelShaper):
            shapers.append((obj, objective_ctx))
            if reshape:
                model = obj.shape_model(model, objective_ctx)
    parts = [*transforms, *others, *extra_parts]
    names = [r.name for r in transform_refs] + [r.name for r in other_refs] + list(extra_names or [type(p).__name__ for p in extra_parts])
    composition = compose(parts, names)
    aux: dict[str, AuxModel] = {}
    for part, name in zip(parts, names):
        if not isinstance(part, AuxiliaryModels):
            continue
        for aux_name, decl in part.auxiliary_models().items():
            if aux_name in aux:
                raise CompositionError(f"{name} declares an auxiliary model {aux_name!r} that another method of the entry declares too; names must be unique")
            if isinstance(decl, Peer):
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(peer_seed(context.seed, aux_name))
                    peer = build_model()
                    for shaper, shaper_ctx in shapers:
                        peer = shaper.shape_model(peer, shaper_ctx)
                aux[aux_name] = AuxModel(peer, trainable=True, uses_features=decl.uses_features)
            elif isinstance(decl, Teacher):
                if teacher is None:
                    raise CompositionError(f"{name} needs a teacher model ({aux_name!r}), which this suite does not provide")
                with torch.random.fork_rng(devices=[]):
                    module = teacher(aux_name, decl).eval()
                for p in module.parameters():
                    p.requires_grad_(False)
                aux[aux_name] = AuxModel(module, trainable=False, uses_features=decl.uses_features)
            else:
                raise CompositionError(f"{name}: auxiliary model {aux_name!r} is a {type(decl).__name__}; declare a harness.seams.Peer or Teacher")
    return TrainingPlan(model, composition, aux, objective_ctx, tuple(names))


def static_class(catalog: Catalog, name: str) -> type | None:
    """The class a training method's build returns, as far as it is known without building it
    (its build's class or return annotation, else its kind's interface); None for other kinds."""
    method = catalog.methods.get(name)
    kind = catalog.kinds.get(method.kind)
    if not kind.trains:
        return None
    return method.built_class() or kind.interface


def check_entry(catalog: Catalog, refs: Sequence[MethodRef]) -> None:
    """Refuse, before training, an entry in which two methods own one role, or whose loss cannot
    take the soft targets its transform produces (as far as the classes their `build` returns
    tell; a build whose class is unknown is checked again when it is built)."""
    owners: dict[type, str] = {}
    classes = {ref.name: static_class(catalog, ref.name) for ref in refs}
    for ref in refs:
        cls = classes[ref.name]
        if cls is None:
            continue
        for role in roles_of(cls):
            if role in SINGLE_OWNER_ROLES:
                if role in owners:
                    raise HarnessError(f"{owners[role]} and {ref.name} both own {_ROLE_WORDS[role]}; combine at most one method that owns {_ROLE_WORDS[role]} in an entry")
                owners[role] = ref.name
    objective = owners.get(Objective)
    if objective is not None and not classes[objective].accepts_soft_targets:
        soft = [n for n, cls in classes.items() if cls is not None and issubclass(cls, Transform) and cls.produces_soft_targets]
        if soft:
            raise HarnessError(f"{objective} cannot take the soft targets that {soft[0]} produces; choose a loss that accepts soft targets or another augmentation")


_ROLE_WORDS = {Objective: "the objective", UpdateRule: "the parameter update", StepOwner: "the training step", Sampler: "sampling", Predictor: "prediction"}


def owns_objective(catalog: Catalog, name: str) -> bool:
    """Whether a method provides the training objective (known without building it)."""
    cls = static_class(catalog, name)
    return cls is not None and issubclass(cls, Objective)


# ---------------------------------------------------------------------------------------------
# the toolkit's fit
# ---------------------------------------------------------------------------------------------


@dataclass
class Trained:
    """A trained (or loaded) model with what evaluating it needs: its input normaliser and the
    entry's predictor, if a method owns prediction."""

    model: nn.Module
    normalizer: Normalizer
    device: str
    plan: TrainingPlan
    log: TrainLog | None = None  # None when the model was loaded from an artifact
    facts: dict[str, Any] = field(default_factory=dict)  # artifact facts: artifact_id, reused, train_seconds

    @property
    def predictor(self) -> Predictor | None:
        return self.plan.composition.predictor

    def predict(self, x: torch.Tensor, *, batch_size: int | None = None) -> torch.Tensor:
        """Logits [N, K] (float32, CPU) of uint8 images `x`, through the entry's predictor if any."""
        return predict(self.model, x, normalizer=self.normalizer, device=self.device, batch_size=batch_size, predictor=self.predictor)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The model's own logits (no predictor): what a downstream consumer of the model sees."""
        return predict(self.model, x, normalizer=self.normalizer, device=self.device)


def with_objective(ctx: RunContext, refs: tuple[MethodRef, ...]) -> tuple[MethodRef, ...]:
    """`refs`, plus the suite's default loss at its defaults when no method provides the objective
    (a suite that does not rank losses trains its models with its own fixed loss)."""
    if any(owns_objective(ctx.catalog, r.name) for r in refs):
        return refs
    loss = ctx.catalog.methods.get(ctx.catalog.suites.get(ctx.spec.suite).default_loss)
    return tuple(sorted((*refs, MethodRef.of(loss)), key=lambda r: ctx.catalog.kinds.get(r.kind).sort_key))


def data_digest(*tensors: torch.Tensor | None) -> str:
    h = hashlib.sha256()
    for t in tensors:
        if t is None:
            h.update(b"none")
            continue
        t = t.detach().contiguous().cpu()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def fit(
    ctx: RunContext,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    num_classes: int,
    class_counts: Sequence[int] | None = None,
    domains: torch.Tensor | None = None,
    methods: Sequence[MethodRef] | None = None,
    recipe: dict[str, Any] | None = None,
    seed: int | None = None,
    model_name: str | None = None,
    model: nn.Module | None = None,
    init_state: dict[str, torch.Tensor] | None = None,
    normalizer: Normalizer | None = None,
    parts: Sequence[Role] = (),
    part_names: Sequence[str] = (),
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
    on_step: Callable[[int], None] | None = None,
    artifact: str | None = None,
    artifact_key: dict[str, Any] | None = None,
) -> Trained:
    """Train a classifier on uint8 images `x` [N, C, H, W] and labels `y` the way the run's spec
    says (its training methods, recipe, seed), through the one engine; see RunContext.fit."""
    spec = ctx.spec
    recipe = dict(recipe if recipe is not None else spec.recipe_dict())
    seed = spec.seed if seed is None else seed
    refs = with_objective(ctx, tuple(methods) if methods is not None else ctx.training_methods())
    model_name = model_name or recipe["model"]
    counts = tuple(int(c) for c in (class_counts if class_counts is not None else torch.bincount(y, minlength=num_classes).tolist()))
    normalizer = normalizer or Normalizer.fit(x)
    in_chans, img_size = int(x.shape[1]), int(x.shape[-1])
    bs = int(recipe["batch_size"])
    num_domains = int(domains.max()) + 1 if domains is not None and len(domains) else 0
    context = TrainContext(num_classes, counts, len(y), int(recipe["epochs"]), ctx.device, bs, max(1, -(-len(y) // bs)), seed, num_domains, in_chans, img_size,
                           labels=y.detach().cpu(), domains=domains.detach().cpu() if domains is not None else None)

    def build_model() -> nn.Module:
        return ctx.catalog.model(model_name).build(num_classes, in_chans, img_size)

    def provide_teacher(name: str, decl: Teacher) -> nn.Module:
        from harness.spec import entry_refs

        teacher_recipe = {**recipe, "epochs": decl.epochs or recipe["epochs"]}
        teacher_model = decl.model or model_name
        if not decl.trained:
            torch.manual_seed(peer_seed(seed, f"random-teacher/{name}"))
            return ctx.catalog.model(teacher_model).build(num_classes, in_chans, img_size)
        trained = fit(ctx, x, y, num_classes=num_classes, class_counts=counts, domains=domains, methods=entry_refs(ctx.catalog, decl.methods),
                      recipe=teacher_recipe, seed=seed, model_name=teacher_model, normalizer=normalizer, artifact="teacher",
                      artifact_key={"teacher_of": artifact or "run"})
        return trained.model

    holder: dict[str, TrainingPlan] = {}

    def build() -> nn.Module:
        if model is None:
            torch.manual_seed(seed)  # the model's initialisation
        plan = assemble(ctx.catalog, refs, context=context, build_model=build_model, model=model, extra_parts=parts, extra_names=part_names, teacher=provide_teacher)
        if init_state is not None:
            plan.model.load_state_dict(init_state)
        holder["plan"] = plan
        return plan.model

    logs: dict[str, TrainLog] = {}

    def run_training(m: nn.Module) -> dict[str, Any]:
        plan = holder["plan"]
        t0 = time.perf_counter()
        logs["log"] = train(m, x, y, recipe=recipe, parts=plan.composition, normalizer=normalizer, seed=seed, device=ctx.device, aux=plan.aux,
                            domains=domains, on_epoch=ctx.report_epoch, evaluate=evaluate, on_step=on_step, compile_model=ctx.compile_model)
        if ctx.device.startswith("cuda"):
            torch.cuda.synchronize()
        return {"train_seconds": round(time.perf_counter() - t0, 3), "final_train_loss": logs["log"].train_loss[-1], "train_size": len(y)}

    if artifact is None:
        trained_model = build()
        facts = run_training(trained_model)
    else:
        from harness.artifacts import cached_model

        key = {
            "role": artifact, "suite": spec.suite, "suite_version": spec.suite_version, "scale": spec.scale, "model": model_name,
            "recipe": recipe, "seed": seed, "methods": [r.canonical() for r in refs], "data": data_digest(x, y, domains),
            "init": data_digest(*init_state.values()) if init_state is not None else None, **(artifact_key or {}),
        }
        trained_model, facts = cached_model(ctx.cache_dir, key, build, run_training)
    trained_model.to(ctx.device).eval()
    return Trained(trained_model, normalizer, ctx.device, holder["plan"], logs.get("log"), facts)


def new_model(ctx: RunContext, *, num_classes: int, in_chans: int, img_size: int, methods: Sequence[MethodRef] | None = None,
              seed: int | None = None, model_name: str | None = None, class_counts: Sequence[int] | None = None, dataset_size: int = 0) -> nn.Module:
    """A freshly initialised model of the recipe's architecture (after `torch.manual_seed(seed)`),
    shaped by the training methods (heads, normalised classifiers) exactly as `fit` shapes it."""
    recipe = ctx.spec.recipe_dict()
    seed = ctx.spec.seed if seed is None else seed
    refs = with_objective(ctx, tuple(methods) if methods is not None else ctx.training_methods())
    name = model_name or recipe["model"]
    counts = tuple(class_counts) if class_counts is not None else (0,) * num_classes
    bs = int(recipe["batch_size"])
    context = TrainContext(num_classes, counts, dataset_size, int(recipe["epochs"]), ctx.device, bs, max(1, -(-dataset_size // bs)), seed, 0, in_chans, img_size)
    torch.manual_seed(seed)
    # the parts are built only to shape the model and then dropped, so a teacher need not be trained here
    plan = assemble(ctx.catalog, refs, context=context, build_model=lambda: ctx.catalog.model(name).build(num_classes, in_chans, img_size),
                    teacher=lambda aux_name, decl: ctx.catalog.model(decl.model or name).build(num_classes, in_chans, img_size))
    return plan.model
