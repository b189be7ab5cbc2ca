"""Typed settings loaded from params.yaml.

One section per stage. A `profile` picks a named block of overrides (e.g. `quick` for tests),
and `-S key.path=value` overrides apply last. Anything wrong -- an unknown key, a wrong type, an
out-of-range value -- raises `SettingsError` naming the file, the key path, the value and what
is allowed, before any work starts.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from reid_models.scenario_kinds import SCENARIO_NAMES

ModelName = Literal["resnet18", "resnet50", "osnet_x0_25", "osnet_x1_0", "mobilenetv2_x1_0"]
DatasetKind = Literal["synthetic", "market1501", "csv"]
CriterionName = Literal["plfp", "l1", "l2", "fpgm", "taylor", "random"]


class SettingsError(ValueError):
    """A user-fixable problem in params.yaml or an override."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DomainSettings(Section):
    kind: DatasetKind = "synthetic"
    # synthetic/market1501: a folder in Market-1501 layout; csv: a manifest file path,pid,camid[,split]
    path: str


class SynthSettings(Section):
    """Size and difficulty of the rendered benchmark (reid_models/data/synth.py)."""

    train_ids: int = Field(200, ge=2, description="source training identities (validation is carved from them)")
    target_train_ids: int | None = Field(None, ge=2, description="target training identities; None: train_ids")
    test_ids: int = Field(800, ge=2, description="target test identities (query/gallery)")
    source_test_ids: int = Field(300, ge=2, description="source test identities")
    min_cameras: int = Field(3, ge=2, description="cameras each identity visits, at least")
    images_per_camera: tuple[int, int] = (1, 4)
    test_images_per_camera: tuple[int, int] = (2, 2)
    family_size: int = Field(2, ge=1, description="look-alike identities per family (1: unrelated)")
    family_changes: int = Field(3, ge=1, description="visible attributes in which family members differ")
    workers: int = Field(2, ge=1)

    @field_validator("images_per_camera", "test_images_per_camera")
    @classmethod
    def _ordered(cls, value: tuple[int, int], info) -> tuple[int, int]:
        low, high = value
        least = 2 if info.field_name == "test_images_per_camera" else 1  # a query and a gallery image
        if not least <= low <= high:
            raise ValueError(f"must be [low, high] with {least} <= low <= high")
        return value

    def spec(self, domain: str):
        """The generator's spec for `domain` ("source" or "target")."""
        from reid_models.data.synth import DomainSpec

        train_ids = self.train_ids if domain == "source" or self.target_train_ids is None else self.target_train_ids
        return DomainSpec(train_ids=train_ids, test_ids=self.source_test_ids if domain == "source" else
                          self.test_ids, min_cameras=self.min_cameras, images_per_camera=self.images_per_camera,
                          test_images_per_camera=self.test_images_per_camera, family_size=self.family_size,
                          family_changes=self.family_changes)


class DataSettings(Section):
    source: DomainSettings
    target: DomainSettings
    synth: SynthSettings = SynthSettings()
    # The data's own seed (synthetic rendering, CSV identity split): the run's `seed` never changes
    # the data, so every seed trains and is scored on the same identities.
    seed: int = Field(0, ge=0)
    height: int = Field(128, ge=32, le=512)
    width: int = Field(64, ge=16, le=256)
    skip_corrupt: bool = False  # skip unreadable images with a warning count instead of failing
    # Share of each domain's training identities held out as a validation query/gallery: every
    # setting is tuned there, never on the test split. 0 disables it.
    val_share: float = Field(0.25, ge=0.0, lt=0.9)

    @field_validator("height", "width")
    @classmethod
    def _multiple_of_8(cls, value: int) -> int:
        if value % 8:
            raise ValueError(f"image size must be a multiple of 8, e.g. {max(8, value // 8 * 8)}")
        return value


class AugmentSettings(Section):
    flip: bool = True
    pad_crop: int = Field(4, ge=0, le=32)
    erasing: float = Field(0.5, ge=0.0, le=1.0)


class TrainRecipe(Section):
    """How to train: optimiser, schedule, losses, batches, augmentation."""

    epochs: int = Field(20, ge=1)
    ids_per_batch: int = Field(16, ge=2, description="P of the P x K identity-balanced sampler")
    images_per_id: int = Field(4, ge=2, description="K of the P x K sampler")
    # None: an epoch is one pass over the data; a number fixes an epoch's images on any domain.
    batches_per_epoch: int | None = Field(None, ge=1)
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = Field(3.5e-4, gt=0.0, le=1.0)
    weight_decay: float = Field(5e-4, ge=0.0, lt=1.0)
    warmup_epochs: int = Field(2, ge=0)
    schedule: Literal["cosine", "step"] = "cosine"
    step_epochs: tuple[int, ...] = ()
    label_smoothing: float = Field(0.1, ge=0.0, lt=1.0)
    triplet_margin: float = Field(0.3, gt=0.0)
    triplet_weight: float = Field(1.0, ge=0.0)
    augment: AugmentSettings = AugmentSettings()
    num_workers: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _warmup_fits(self) -> "TrainRecipe":
        if self.warmup_epochs >= self.epochs and self.epochs > 1:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must be < epochs ({self.epochs})")
        return self


class InitRecipe(Section):
    """The recipe fields that replace pretraining's when it starts from `pretrain.init` weights.

    Fine-tuning ImageNet weights wants a smaller step and a short warm-up (Bag of Tricks: Adam
    3.5e-4) where training from scratch may not; each field here overrides the same-named one.
    """

    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = Field(3.5e-4, gt=0.0, le=1.0)
    weight_decay: float = Field(5e-4, ge=0.0, lt=1.0)
    warmup_epochs: int = Field(2, ge=0)


class TrainSettings(TrainRecipe):
    """Pretraining: the recipe plus which backbone to train and, optionally, the weights it starts from."""

    model: ModelName = "resnet18"
    # A local weights file (torchvision ImageNet state_dict or torchreid checkpoint); None: random init.
    init: str | None = None
    init_recipe: InitRecipe = InitRecipe()

    @field_validator("init")
    @classmethod
    def _init_path(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("empty path; give a local weights file, or null to train from scratch")
        return value

    @model_validator(mode="after")
    def _init_warmup_fits(self) -> TrainSettings:
        warmup = self.init_recipe.warmup_epochs
        if self.init is not None and warmup >= self.epochs and self.epochs > 1:
            raise ValueError(f"init_recipe.warmup_epochs ({warmup}) must be < epochs ({self.epochs})")
        return self

    def effective_recipe(self) -> TrainSettings:
        """The recipe pretraining runs: with `init` set, `init_recipe`'s fields replace the recipe's."""
        if self.init is None:
            return self
        return self.model_copy(update=self.init_recipe.model_dump())


class FinetuneSettings(TrainRecipe):
    """Training while (progressive) or after (one-shot) pruning; same recipe, shorter."""

    epochs: int = Field(6, ge=1)
    warmup_epochs: int = Field(0, ge=0)


class PruneSettings(Section):
    criterion: CriterionName = "plfp"
    flops_reduction: float = Field(0.5, gt=0.0, le=0.95, description="share of FLOPs to remove, (0, 0.95]")
    mode: Literal["progressive", "oneshot"] = "progressive"
    allocation: Literal["global", "uniform"] = "global"
    # global only: rank with this criterion's scores to decide how many channels each group loses,
    # and let `criterion` choose only which ones (criteria compared under one shared allocation);
    # null: the criterion allocates with its own scores.
    allocation_criterion: Literal["plfp", "l1", "l2", "fpgm"] | None = None
    layer_cap: float = Field(0.95, gt=0.0, le=0.95, description="most a channel group may lose")
    plfp_k: int = Field(3, ge=1, le=64)
    decay: float = Field(0.3, ge=0.0, lt=1.0, description="PLFP: selected filters are multiplied by it each epoch")
    prune_embedding: bool = False
    scope: Literal["all", "internal"] = "all"  # internal: never prune channels shared by a residual add
    round_channels: int = Field(1, ge=1, le=64, description="kept channels rounded to a multiple (8 helps CPUs)")
    # What the reduction is a share of: FLOPs, or latency predicted from a table of conv timings
    # measured on this machine (pruning/latency.py) in this runtime, thread count and batch size.
    budget: Literal["flops", "latency"] = "flops"
    latency_runtime: Literal["torch", "onnxruntime", "onnxruntime_int8"] = "torch"
    latency_threads: int = Field(2, ge=1, le=256)
    latency_batch: int = Field(1, ge=1, le=256)
    latency_cache: str = "outputs/latency"
    latency_corrections: int = Field(2, ge=0, le=5, description="times the pruned network is timed and the "
                                     "table's aim corrected by the measured error")
    taylor_batches: int = Field(4, ge=1)
    data: Literal["source", "target"] = "source"
    finetune: FinetuneSettings = FinetuneSettings()
    # Recovery (reid_models/pruning/recovery.py). gradual: the pruned share ramps up to the budget,
    # the channels go at `remove_at` of the step, the small network trains the rest; legacy: decay
    # the whole budget every epoch, remove after the last one. Defaults: params.yaml says why.
    schedule: Literal["gradual", "legacy"] = "legacy"
    ramp: Literal["cubic", "linear"] = "cubic"
    remove_at: float = Field(0.5, gt=0.0, le=1.0, description="share of a pruning step's epochs before removal")
    bn_recalibration_batches: int = Field(0, ge=0, description="training batches that re-estimate BatchNorm "
                                          "statistics after removal; 0: none")
    distill: bool = False  # an unpruned teacher in every pruning and recovery step
    distill_feature_weight: float = Field(1.0, ge=0.0)
    distill_relation_weight: float = Field(1.0, ge=0.0)
    distill_temperature: float = Field(0.1, gt=0.0)
    # prune_during's teacher: ema (a mean teacher of the unpruned student, frozen at removal) or
    # start (the source model the step starts from).
    during_teacher: Literal["ema", "start"] = "ema"
    teacher_momentum: float = Field(0.95, ge=0.0, lt=1.0, description="mean teacher: teacher x m + student x (1-m)")


class ClusterSettingsModel(Section):
    """Pseudo-labels for unlabelled cameras: k-reciprocal Jaccard distance + DBSCAN."""

    k1: int = Field(20, ge=2, description="k of the k-reciprocal neighbourhoods")
    k2: int = Field(6, ge=1, description="neighbours averaged in the query expansion")
    eps: float = Field(0.4, gt=0.0, lt=1.0, description="DBSCAN radius on the Jaccard distance")
    min_samples: int = Field(4, ge=2)
    camera_aware: bool = True
    eps_quantile: float | None = Field(None, gt=0.0, lt=1.0, description="set: eps is this quantile of each "
                                          "round's neighbour distances (no labels), instead of the fixed eps")


class MemorySettingsModel(Section):
    """The cluster memory head of unsupervised adaptation (`adapt.head: memory`)."""

    temperature: float = Field(0.05, gt=0.0, description="InfoNCE temperature")
    momentum: float = Field(0.2, ge=0.0, lt=1.0, description="centroid <- momentum x centroid + (1 - momentum) x feature")
    camera_proxies: bool = Field(False, description="CAP's intra- and inter-camera proxy terms beside the memory")
    camera_weight: float = Field(0.5, ge=0.0, description="x (intra + inter camera proxy terms)")
    camera_negatives: int = Field(50, ge=1, description="hardest other-identity proxies in the inter-camera term")
    outliers: Literal["drop", "instances"] = Field("drop", description="images no cluster took: left out, or "
                                                   "kept as one memory entry each (negatives only; SpCL)")


class AdaptSettings(Section):
    """How a model learns the target cameras (the epochs come from `scenarios.epochs`)."""

    backbone_lr_scale: float = Field(0.1, gt=0.0, le=1.0, description="backbone lr x this; the new head gets lr")
    epochs_per_round: int = Field(2, ge=1, description="unsupervised: epochs on each round's pseudo-labels")
    cluster: ClusterSettingsModel = ClusterSettingsModel()
    head: Literal["classifier", "memory"] = Field("classifier", description="unsupervised: a new random head "
                                                  "each round, or a cluster memory (Cluster-Contrast)")
    memory: MemorySettingsModel = MemorySettingsModel()
    mean_teacher: float | None = Field(None, ge=0.5, lt=1.0, description="unsupervised: cluster the features of a "
                                       "mean teacher (EMA of the adapting model, this momentum per step; MMT)")
    pseudo_labels: Literal["student", "teacher"] = Field("student", description="unsupervised pruning steps: "
                                                         "cluster the features of the network being pruned, or "
                                                         "of its unpruned teacher")
    # The new head learns at this lr, the backbone at backbone_lr_scale of it (params.yaml says why).
    train: FinetuneSettings = FinetuneSettings(lr=0.0035)


ScenarioName = Literal[SCENARIO_NAMES]  # reid_models/scenario_kinds.py: the one list of scenario kinds



class ScenarioSettings(Section):
    """The grid the `prune-adapt` flow runs: scenarios x criteria x reductions x adaptation x seeds."""

    names: list[ScenarioName] = list(SCENARIO_NAMES)
    criteria: list[CriterionName] = ["plfp"]
    flops_reductions: list[float] = [0.5]
    adaptation: list[Literal["supervised", "unsupervised"]] = ["supervised", "unsupervised"]
    seeds: list[int] = [0]
    epochs: int = Field(6, ge=1, description="training epochs after pretraining, equal for every scenario")
    prune_epochs: int = Field(3, ge=1, description="prune_before/after: epochs spent pruning (the rest adapt)")
    batches_per_epoch: int = Field(20, ge=1, description="P x K batches per epoch on any domain: equal images")

    @field_validator("flops_reductions")
    @classmethod
    def _ratios(cls, values: list[float]) -> list[float]:
        for value in values:
            if not 0.0 < value <= 0.95:
                raise ValueError(f"{value} is outside (0, 0.95]")
        return values

    @model_validator(mode="after")
    def _prune_fits(self) -> "ScenarioSettings":
        if {"prune_before", "prune_after", "adapt_short"} & set(self.names) and self.prune_epochs >= self.epochs:
            raise ValueError(f"prune_epochs ({self.prune_epochs}) must be < epochs ({self.epochs}) so "
                             "prune_before/prune_after keep epochs to adapt")
        for name in ("names", "criteria", "flops_reductions", "adaptation", "seeds"):
            if not getattr(self, name):
                raise ValueError(f"scenarios.{name} is empty; list at least one value")
        return self


class EvaluateSettings(Section):
    batch_size: int = Field(128, ge=1)
    query_chunk: int = Field(256, ge=1, description="queries ranked at once; bounds memory")
    max_rank: int = Field(50, ge=10)


class ShipSettings(Section):
    """How each final model is shipped after the grid (reid_models.export): an ONNX file, int8 or not,
    scored and timed under ONNX Runtime for the report's `shipped_*` columns."""

    # One or several: each final model is shipped once per choice (the report's shipped.csv has a row
    # per model and choice); the first is the row's `shipped_*` columns, the plot's hollow marker and
    # the registry version's files.
    quantize: list[Literal["none", "int8_ptq", "int8_qat"]] = Field(["int8_ptq"], min_length=1)
    # int8_qat: quantisation-aware fine-tuning first (reid_models/quantize.py), on the model's training
    # domain: its labels, or for unsupervised scenarios pseudo-labels of the model's own features.
    qat_epochs: int = Field(2, ge=1)
    qat_lr_scale: float = Field(0.01, gt=0.0, le=1.0, description="x adapt.train.lr")
    calibration_images: int = Field(300, ge=1, description="training images of the model's domain, never test")
    calibration_method: Literal["minmax", "entropy", "percentile"] = "minmax"

    @field_validator("quantize", mode="before")
    @classmethod
    def one_or_several(cls, value):
        value = [value] if isinstance(value, str) else value
        if isinstance(value, list) and len(set(value)) < len(value):
            raise ValueError("name each choice at most once, e.g. [int8_ptq, none]")
        return value


class TrackingSettings(Section):
    # Relative sqlite paths are resolved against the project root: MLflow needs absolute URIs.
    uri: str = "sqlite:///mlruns.db"
    experiment: str = Field("reid-prune", min_length=1, description="prefix; the dataset pair is appended")
    artifact_root: str = "mlartifacts"
    registered_model: str = Field("reid-prune", min_length=1, description="Model Registry name of final models")


class OrchestrationSettings(Section):
    """How Prefect runs the scenario tasks. The flow code is the same for every runner."""

    task_runner: Literal["threads", "dask"] = "threads"
    workers: int = Field(1, ge=1, description="threads: scenarios at once; dask: LocalCluster worker processes")
    dask_address: str | None = Field(None, description="an existing scheduler, e.g. tcp://10.0.0.5:8786")
    torch_threads: int = Field(1, ge=1, description="intra-op threads per scenario task, whatever `workers` is: "
                               "another count sums in another order and gives other results")

    @field_validator("dask_address")
    @classmethod
    def _scheduler_url(cls, value: str | None) -> str | None:
        if value is not None and "://" not in value:
            raise ValueError("expected a scheduler address such as tcp://127.0.0.1:8786")
        return value


class Settings(Section):
    profile: str = "default"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = Field(0, ge=0)
    outputs: str = "outputs"
    data: DataSettings
    pretrain: TrainSettings = TrainSettings()
    prune: PruneSettings = PruneSettings()
    adapt: AdaptSettings = AdaptSettings()
    scenarios: ScenarioSettings = ScenarioSettings()
    evaluate: EvaluateSettings = EvaluateSettings()
    ship: ShipSettings = ShipSettings()
    tracking: TrackingSettings = TrackingSettings()
    orchestration: OrchestrationSettings = OrchestrationSettings()


def parse_override(text: str) -> tuple[list[str], Any]:
    """`pretrain.epochs=2` -> (["pretrain", "epochs"], 2); the value is parsed as YAML."""
    if "=" not in text:
        raise SettingsError(f"override {text!r}: expected KEY.PATH=VALUE, e.g. pretrain.epochs=2")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise SettingsError(f"override {text!r}: empty key")
    return parts, yaml.safe_load(raw)


def _merge(base: dict, extra: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _set_path(tree: dict, parts: list[str], value: Any, origin: str) -> None:
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise SettingsError(f"{origin}: {'.'.join(parts[: i + 1])} is not a section")
        node = child
    node[parts[-1]] = value


def _format_errors(error: ValidationError, origin: str, tree: dict) -> str:
    lines = [f"invalid settings in {origin}:"]
    for item in error.errors():
        path = ".".join(str(p) for p in item["loc"])
        if item["type"] == "extra_forbidden":
            lines.append(f"  {path}: unknown key; remove it or check its spelling")
            continue
        shown = item.get("input")
        if isinstance(shown, dict):
            shown = "{...}"
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"  {path} = {shown!r}: {message}")
    return "\n".join(lines)


def build_settings(tree: dict, origin: str = "params.yaml") -> Settings:
    try:
        return Settings.model_validate(tree)
    except ValidationError as error:
        raise SettingsError(_format_errors(error, origin, tree)) from None


def load_settings(
    path: str | Path = "params.yaml",
    profile: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> Settings:
    """Read params.yaml, apply the chosen profile's overrides, then `-S` overrides, validate."""
    path = Path(path)
    if not path.is_file():
        raise SettingsError(f"settings file {path} not found; run from the project root or pass --params")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise SettingsError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(tree, dict):
        raise SettingsError(f"{path}: expected a mapping of sections at the top level")
    profiles = tree.pop("profiles", {}) or {}
    chosen = profile or tree.get("profile", "default")
    if chosen != "default":
        if chosen not in profiles:
            valid = ", ".join(["default", *profiles])
            raise SettingsError(f"{path}: profile {chosen!r} is not defined under `profiles`; valid: {valid}")
        tree = _merge(tree, profiles[chosen])
    tree["profile"] = chosen
    for text in overrides:
        parts, value = parse_override(text)
        _set_path(tree, parts, value, f"override {text!r}")
    origin = f"{path}" + (f" (profile {chosen})" if chosen != "default" else "")
    if overrides:
        origin += f" with overrides {list(overrides)}"
    return build_settings(tree, origin)


def artifact_location(settings: TrackingSettings, root: Path | None = None) -> str:
    """MLflow artifact root as a URI: s3://, gs:// ... as given; a local folder made absolute."""
    if "://" in settings.artifact_root:
        return settings.artifact_root
    folder = Path(settings.artifact_root)
    return (folder if folder.is_absolute() else (root or project_root()) / folder).resolve().as_uri()


def project_root() -> Path:
    return Path.cwd()


def tracking_uri(settings: TrackingSettings, root: Path | None = None) -> str:
    """Absolute MLflow URI: MLflow 3 refuses file stores and mis-resolves relative sqlite paths."""
    uri = settings.uri
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        db = (root or project_root()) / uri[len(prefix):]
        return f"sqlite:///{db.resolve()}"
    return uri
