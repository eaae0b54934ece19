"""A labeling job, every parameter defined once: the options of ``clearclip label``, the parameters of the
``label-dataset`` flow and the keyword arguments of the Python API all come from ``LabelJob``'s fields.

A field's metadata gives its help text, its CLI group and the check its value must pass; the check runs
in argparse (so a bad option is a usage error naming the valid range) and again when a job is built.
"""

from __future__ import annotations

import json
import math
import re
import string
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields

from .. import __version__
from ..annotations.thresholds import RegionFilter, Thresholds, load_class_thresholds
from ..errors import ClearCLIPError
from ..io.images import DEFAULT_MAX_PIXELS
from ..io.text import read_user_text
from ..io.threads import decode_workers, finisher_processes, model_threads
from ..options import INSTANCE_MODES, PRECISIONS, REFINEMENTS, VARIANT_NAMES, SegmentSettings, get_decomposition
from ..vocabulary import Vocabulary

DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


# ------------------------------------------------------------------------------------------- checks
def _number(value, kind=float):
    if isinstance(value, bool):
        raise ValueError
    if kind is int:
        if isinstance(value, float) and not value.is_integer():
            raise ValueError
        return int(value)
    result = float(value)
    if not math.isfinite(result):
        raise ValueError
    return result


def whole(low: int) -> Callable:
    def check(value):
        try:
            value = _number(value, int)
        except (TypeError, ValueError):
            raise ValueError(f"must be a whole number, {low} or more") from None
        if value < low:
            raise ValueError(f"must be a whole number, {low} or more")
        return value

    check.numeric = True
    check.bounds = {"ge": low}
    return check


def fraction(value):
    """A number from 0 to 1."""
    try:
        value = _number(value)
    except (TypeError, ValueError):
        raise ValueError("must be a number from 0 to 1") from None
    if not 0 <= value <= 1:
        raise ValueError("must be a number from 0 to 1")
    return value


fraction.numeric = True
fraction.bounds = {"ge": 0, "le": 1}


def positive(value):
    """A finite number above 0."""
    try:
        value = _number(value)
    except (TypeError, ValueError):
        raise ValueError("must be a finite number above 0") from None
    if value <= 0:
        raise ValueError("must be a finite number above 0")
    return value


positive.numeric = True
positive.bounds = {"gt": 0}


def one_of(*choices: str) -> Callable:
    def check(value):
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return value

    check.choices = choices
    return check


def device_name(value):
    if not isinstance(value, str) or not DEVICE_PATTERN.fullmatch(value):
        raise ValueError("must be auto, cpu, cuda or cuda:N (other devices are not supported)")
    return value


def text(value):
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be a non-empty string")
    return value


def pretrained_check(value):
    """A pretrained tag or weight file; None, or 'none' in any case, for random weights."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "none"):
        return None
    return text(value)


def _one_placeholder(template) -> bool:
    """Whether a template holds exactly one plain ``{}`` (and no other field) for the class name."""
    try:
        fields_ = [(name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(template)
                   if name is not None]
        return fields_ == [("", "", None)]
    except (ValueError, IndexError, KeyError):
        return False


def templates_check(value):
    """None (the 80 OpenAI ImageNet templates) or a list of templates, each with exactly one '{}'."""
    if value is None:
        return None
    if isinstance(value, str) or not value or not all(isinstance(t, str) and _one_placeholder(t) for t in value):
        raise ValueError("must be a list of prompt templates, each with exactly one '{}' for the class name (write "
                         "a literal brace as '{{' or '}}')")
    return list(value)


def thresholds_check(value):
    """None, a JSON or YAML file of per-class thresholds, or the mapping itself."""
    if value is None or isinstance(value, dict):
        return value
    return text(value)


def dilations_check(value):
    try:
        values = [_number(v, int) for v in value]
    except (TypeError, ValueError):
        raise ValueError("must be whole numbers of pixels, 1 or more") from None
    if not values or min(values) < 1:
        raise ValueError("must be whole numbers of pixels, 1 or more")
    return values


SECRET_WORDS = ("secret", "password", "token", "key", "credential", "sas", "session")


def storage_options_check(value):
    """Non-secret options of the fsspec backend, as a mapping or ``KEY=VALUE`` strings (a value that reads as
    JSON is parsed: ``use_ssl=false``). Credentials are refused: each machine supplies its own."""
    if value is None:
        return {}
    if isinstance(value, (list, tuple)):
        pairs = {}
        for item in value:
            key, sep, raw = str(item).partition("=")
            if not sep or not key.strip():
                raise ValueError(f"must be KEY=VALUE pairs ({item!r} is not one)")
            try:
                pairs[key.strip()] = json.loads(raw)
            except ValueError:
                pairs[key.strip()] = raw
        value = pairs
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ValueError("must be a mapping of option names to values")
    secret = [k for k in value if any(word in k.lower() for word in SECRET_WORDS)]
    if secret:
        raise ValueError(f"must not hold credentials ({', '.join(sorted(secret))}): give them to each machine "
                         "through the environment, a profile or an instance role, never to a job")
    return dict(value)


def option(default, help: str, check: Callable, group: str, flag: str | None = None, **extra):
    """A job field: default, help text, the check of its value, its CLI group and flag."""
    metadata = {"help": help, "check": check, "group": group, "flag": flag, **extra}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


MODEL = "model"
SEGMENTATION = "segmentation (defaults are the paper's settings)"
FILTERING = "confidence filtering"
THROUGHPUT = "throughput"
STORAGE = "object storage"


@dataclass(frozen=True)
class LabelJob:
    """Everything a labeling run needs, as JSON-able values. Bad values raise ClearCLIPError naming them."""

    classes: str | list[str] = field(metadata={"help": "a class-file path, or a list of class strings ('person, man')",
                                               "check": lambda v: v, "group": None})
    model: str = option("ViT-B-16", "open_clip model name (ViT-B-16, ViT-L-14, ...), or local-dir:/folder, or "
                        "hf-hub:org/repo", text, MODEL)
    pretrained: str | None = option("openai", "pretrained tag (openai, laion2b_s34b_b88k, ...) or a weight file; "
                                    "'none' for random weights, seeded (tests and benchmarks only); ignored for "
                                    "local-dir:/hf-hub:", pretrained_check, MODEL)
    variant: str = option("clearclip", "last-block decomposition: clearclip (q-q attention, no residual, no FFN), "
                          "vanilla (unmodified CLIP), maskclip, sclip", one_of(*VARIANT_NAMES), MODEL)
    device: str = option("auto", "auto (CUDA when present), cpu, cuda, cuda:1, ...", device_name, MODEL)
    precision: str = option("auto", "auto is fp16 autocast on CUDA and fp32 on the CPU; a run folder keeps the "
                            "precision its first labeler used", one_of(*PRECISIONS), MODEL)
    compile: bool = option(False, "torch.compile the vision forward (faster on GPUs after a warm-up per window size)",
                           bool, MODEL)
    short_side: int = option(448, "resize the short side to this (0 keeps the size)", whole(0), SEGMENTATION)
    max_long_side: int = option(2048, "but keep the long side at most this", whole(1), SEGMENTATION)
    crop: int = option(448, "sliding-window size in pixels", whole(1), SEGMENTATION)
    stride: int = option(224, "sliding-window stride in pixels", whole(1), SEGMENTATION)
    logit_scale: float = option(50.0, "softmax temperature factor", positive, SEGMENTATION)
    templates: list[str] | None = option(None, "a prompt template with {} for the class name (repeatable; default: "
                                         "the 80 OpenAI ImageNet templates)", templates_check, SEGMENTATION,
                                         flag="--template")
    refine: str = option("none", "pamr: refine the full-size logits with PAMR, guided by the image (NACLIP's "
                         "placement; sharper edges, several times the CPU time of segmentation; none: the paper's "
                         "method)", one_of(*REFINEMENTS), SEGMENTATION)
    pamr_iterations: int = option(10, "PAMR propagation steps", whole(1), SEGMENTATION)
    pamr_dilations: list[int] = option([8, 16], "PAMR neighbourhood dilations in pixels", dilations_check,
                                       SEGMENTATION, nargs="+", metavar="D")
    background_threshold: float = option(0.0, "pixels whose score is below this get class 0, which must be "
                                         "'background' (paper: VOC 0.5, Context60 0.15, COCO-Object 0.4; 0 = off)",
                                         fraction, SEGMENTATION)
    pixel_threshold: float = option(0.0, "pixels whose score is below this are unlabeled", fraction, FILTERING)
    min_score: float = option(0.0, "drop regions whose mean pixel score is below this (a class's score is shared "
                              "with its synonyms, so keep it low for classes with several)", fraction, FILTERING)
    min_area: int = option(0, "drop regions smaller than this many pixels", whole(0), FILTERING)
    min_area_fraction: float = option(0.001, "drop regions smaller than this fraction of the image (0.001 = 0.1 %)",
                                      fraction, FILTERING)
    class_thresholds: str | dict | None = option(None, 'per-class overrides, JSON or YAML: {"person": {"min_score": '
                                                 '0.5, "min_area": 100}}', thresholds_check, FILTERING, metavar="FILE")
    instances: str = option("components", "components: one annotation per connected region of a class; semantic: "
                            "one per class per image", one_of(*INSTANCE_MODES), FILTERING)
    batch_size: int = option(4, "images whose windows share forward passes (halved on CUDA out-of-memory)",
                             whole(1), THROUGHPUT)
    workers: int = option(-1, "image decoding processes (-1 = one per spare core, up to 4; 0 = in-process)",
                          whole(-1), THROUGHPUT)
    max_pixels: int = option(DEFAULT_MAX_PIXELS, "images above this many pixels are reported, not decoded",
                             whole(1), THROUGHPUT)
    finishers: int = option(-1, "processes that write label maps and records (-1 = the cores left after the main "
                            "process and the decode workers, at least 1; 0 = a thread of the main process)",
                            whole(-1), THROUGHPUT)
    threads: int = option(-1, "intra-op threads of the model on the CPU (-1 = the cores this process may use, from "
                          "its CPU affinity and cgroup quota)", whole(-1), THROUGHPUT)
    storage_options: dict = option({}, "non-secret options of the storage of s3://, gs://, az:// locations, as "
                                   "KEY=VALUE (repeatable), e.g. client_kwargs='{\"endpoint_url\": \"http://host:8333\"}'"
                                   " for an S3-compatible server; credentials come from each machine's environment, "
                                   "profiles or roles", storage_options_check, STORAGE, flag="--storage-option",
                                   metavar="KEY=VALUE", echo=False)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            try:
                checked = f.metadata["check"](value)
            except ValueError as error:
                shown = f" (got {value!r})" if f.metadata.get("echo", True) else ""  # never echo what may be a secret
                raise ClearCLIPError(f"{f.name} {error}{shown}") from None
            object.__setattr__(self, f.name, checked)

    def to_dict(self) -> dict:
        return asdict(self)

    def label_config(self) -> "LabelConfig":
        """The parsed form of the job (vocabulary, settings, filters); reads the class and thresholds files
        when the job names files. Raises ClearCLIPError for bad values."""
        if isinstance(self.classes, str):
            vocabulary = Vocabulary.from_text(read_user_text(self.classes, "class file", self.storage_options),
                                              self.classes)
        else:
            vocabulary = Vocabulary.from_strings(self.classes)
        default = Thresholds(self.pixel_threshold, self.min_score, self.min_area, self.min_area_fraction)
        per_class = load_class_thresholds(self.class_thresholds, default, vocabulary,
                                          self.storage_options) if self.class_thresholds else {}
        settings = SegmentSettings(self.short_side, self.max_long_side, self.crop, self.stride, self.logit_scale,
                                   self.background_threshold, refine=self.refine,
                                   pamr_iterations=self.pamr_iterations).with_overrides(
            templates=self.templates, pamr_dilations=self.pamr_dilations)
        if settings.background_threshold > 0 and not vocabulary.has_background:
            raise ClearCLIPError("background_threshold needs 'background' as the first class of the vocabulary")
        return LabelConfig(vocabulary, settings, RegionFilter(default, per_class, self.instances), self.batch_size,
                           self.workers, self.max_pixels, self.finishers, self.threads, self.storage_options)

    def resolved(self, config: "LabelConfig | None" = None) -> "LabelJob":
        """The same job with its files read: classes as strings (synonyms included) and per-class thresholds as
        values. Shards receive this, so an edited or missing class file cannot change what they compute."""
        config = config or self.label_config()
        per_class = {name: vars(t) for name, t in sorted(config.region_filter.per_class.items())}
        return LabelJob(**{**self.to_dict(), "classes": config.vocabulary.to_strings(),
                           "class_thresholds": per_class or None})

    def load_model(self):
        """The ClearCLIP this job runs, weights loaded (raises ClearCLIPError naming what is missing)."""
        from ..inference.predictor import ClearCLIP

        return ClearCLIP.from_pretrained(self.model, self.pretrained, device=self.device, precision=self.precision,
                                         variant=self.variant, compile=self.compile)

    def info(self, config: "LabelConfig | None" = None) -> dict:
        """What the run computes (the ``info`` of annotations.json and the run's config.json): no timings,
        paths or throughput settings. Weight files are hashed; nothing is loaded, torch is not imported."""
        from ..inference.weights import weights_identity

        config = config or self.label_config()
        weights_id, description = weights_identity(self.model, self.pretrained)
        return json.loads(json.dumps({  # exactly what config.json holds, so a stored config compares equal
            "description": "clearclip pseudo-annotations",
            "version": __version__,
            "model": description["model"],
            "pretrained": description["pretrained"],
            "weights_sha256": description.get("weights_sha256"),
            "weights_id": weights_id,
            "variant": self.variant,
            "decomposition": asdict(get_decomposition(self.variant)),
            "vocabulary": config.vocabulary.to_strings(),
            "background_class": config.vocabulary.has_background,
            "settings": config.settings.to_dict(),
            "thresholds": config.region_filter.to_dict(),
        }))


@dataclass(frozen=True)
class LabelConfig:
    """What a labeling run computes (vocabulary, settings, filters) and how it uses the machine."""

    vocabulary: Vocabulary
    settings: SegmentSettings = SegmentSettings()
    region_filter: RegionFilter = RegionFilter()
    batch_size: int = 4  # images whose windows share forward passes
    num_workers: int = -1  # DataLoader decode workers; -1: one per spare core, up to 4
    max_pixels: int = DEFAULT_MAX_PIXELS
    finishers: int = -1  # finishing processes; -1: the cores left, at least 1; 0: a thread of this process
    threads: int = -1  # the model's intra-op threads on the CPU; -1: the cores this process may use
    storage_options: dict = field(default_factory=dict)  # of the dataset's and run folder's object storage

    def workers(self) -> int:
        return decode_workers(self.num_workers)

    def finisher_count(self, workers: int) -> int:
        return finisher_processes(self.finishers, workers)

    def model_threads(self) -> int:
        return model_threads(self.threads)
