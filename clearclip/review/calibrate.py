"""Thresholds calibrated from review: per class, the lowest ``min_score`` whose pseudo-labels a reviewer kept
at the target precision.

Evidence comes from the samples tagged as reviewed (samples tagged ``rejected`` are left out: an unusable
image says nothing about its labels). Each pseudo-label the run wrote (``pseudo_labels_run``) is:
- correct when ``pseudo_labels`` still holds it (same ``run_index``) with the same label;
- wrong when the reviewer deleted or relabeled it.
A relabeled detection, and every detection a reviewer drew, is a pseudo-label the run missed for its (new)
class: it counts against that class's recall, not its precision.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ClearCLIPError
from .fields import PRED_FIELD, REJECTED_TAG, REVIEWED_TAG, RUN_FIELD, check_detections_field

MIN_REVIEWED = 20  # fewer reviewed pseudo-labels than this: a class keeps the run's threshold


@dataclass
class ClassEvidence:
    """What the review says about one class: (score, kept) per pseudo-label, and how many it missed."""

    outcomes: list[tuple[float, bool]] = field(default_factory=list)
    missed: int = 0

    def curve(self) -> list[tuple[float, float, float]]:
        """(threshold, precision, recall) for every threshold that changes what is kept, lowest first."""
        outcomes = sorted(self.outcomes, key=lambda o: -o[0])
        positives = sum(kept for _, kept in outcomes) + self.missed
        points, kept_count = [], 0
        for rank, (score, kept) in enumerate(outcomes, start=1):
            kept_count += kept
            if rank == len(outcomes) or outcomes[rank][0] != score:  # the last pseudo-label at this score
                points.append((score, kept_count / rank, kept_count / positives if positives else 0.0))
        return points[::-1]


@dataclass
class Calibration:
    """A class's chosen threshold, or why it has none: ``status`` is "calibrated", "too few reviewed" or
    "target not reached" (then the threshold is just above every reviewed score)."""

    name: str
    reviewed: int
    status: str
    threshold: float | None = None
    precision: float | None = None
    recall: float | None = None


def collect_evidence(dataset, reviewed_tag: str = REVIEWED_TAG, excluded_tags=(REJECTED_TAG,)) -> dict[str, ClassEvidence]:
    """Per class, the outcome of every reviewed pseudo-label and the misses."""
    for name in (PRED_FIELD, RUN_FIELD):
        check_detections_field(dataset, name, "calibrate reads datasets made by clearclip review")
    view = dataset.match_tags(reviewed_tag)
    if excluded_tags:
        view = view.match_tags(list(excluded_tags), bool=False)
    if not len(view):
        raise ClearCLIPError(f"no sample of '{dataset.name}' is tagged '{reviewed_tag}'; tag the samples a reviewer has "
                             "checked (in the App: select them, then the tag icon) and run calibrate again")
    evidence: dict[str, ClassEvidence] = defaultdict(ClassEvidence)
    for sample in view.select_fields([PRED_FIELD, RUN_FIELD]).iter_samples():
        current_labels = sample[PRED_FIELD].detections if sample[PRED_FIELD] else []
        original_labels = sample[RUN_FIELD].detections if sample[RUN_FIELD] else []
        now = {d["run_index"]: d for d in current_labels if d.has_field("run_index")}
        for original in original_labels:
            current = now.get(original["run_index"])
            evidence[original.label].outcomes.append(
                (original.confidence, current is not None and current.label == original.label))
        originals = {d["run_index"]: d.label for d in original_labels}
        for detection in current_labels:
            index = detection["run_index"] if detection.has_field("run_index") else None
            if index is None or originals.get(index) != detection.label:  # drawn, or relabeled to this class
                evidence[detection.label].missed += 1
    return dict(evidence)


def choose_thresholds(evidence: dict[str, ClassEvidence], target_precision: float,
                      min_reviewed: int = MIN_REVIEWED) -> list[Calibration]:
    """Per class, the lowest threshold whose precision on the reviewed pseudo-labels reaches the target."""
    if not 0 < target_precision <= 1:
        raise ClearCLIPError(f"--target-precision must be above 0 and at most 1, got {target_precision}")
    result = []
    for name, classes in sorted(evidence.items()):
        reviewed = len(classes.outcomes)
        if reviewed < min_reviewed:
            result.append(Calibration(name, reviewed, "too few reviewed"))
            continue
        reaching = [(t, p, r) for t, p, r in classes.curve() if p >= target_precision]
        if reaching:
            threshold, precision, recall = reaching[0]
            result.append(Calibration(name, reviewed, "calibrated", threshold, precision, recall))
        else:
            top = max(score for score, _ in classes.outcomes)
            result.append(Calibration(name, reviewed, "target not reached", min(1.0, top + 1e-6), 0.0, 0.0))
    return result


def calibration_table(calibrations: list[Calibration], target_precision: float) -> str:
    lines = [f"target precision {target_precision:.2f}",
             f"{'class':<30} {'reviewed':>8} {'precision':>9} {'recall':>7} {'min_score':>9}  note"]
    for c in calibrations:
        if c.status == "too few reviewed":
            lines.append(f"{c.name:<30} {c.reviewed:>8} {'-':>9} {'-':>7} {'-':>9}  too few reviewed "
                         f"(< {MIN_REVIEWED}): keeps the run's threshold")
        elif c.status == "target not reached":
            lines.append(f"{c.name:<30} {c.reviewed:>8} {'-':>9} {'-':>7} {c.threshold:>9.4f}  target not reached at "
                         "any threshold: set above every reviewed score")
        else:
            lines.append(f"{c.name:<30} {c.reviewed:>8} {c.precision:>9.3f} {c.recall:>7.3f} {c.threshold:>9.4f}")
    return "\n".join(lines)


def thresholds_yaml(calibrations: list[Calibration]) -> str:
    """The ``--class-thresholds`` file: ``{class: {min_score: ...}}`` for every class that got a threshold."""
    import yaml

    chosen = {c.name: {"min_score": round(float(c.threshold), 6)} for c in calibrations if c.threshold is not None}
    return yaml.safe_dump(chosen, sort_keys=True, allow_unicode=True)


def check_plot_path(path: Path) -> None:
    """Raise ClearCLIPError unless matplotlib can write a figure to ``path`` (by its suffix)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    formats = Figure().canvas.get_supported_filetypes()
    if path.suffix.lower().lstrip(".") not in formats:
        raise ClearCLIPError(f"--plot {path}: matplotlib cannot write '{path.suffix or 'no suffix'}'; use one of "
                             f"{', '.join('.' + f for f in sorted(formats))}")


def plot_curves(evidence: dict[str, ClassEvidence], calibrations: list[Calibration], path: Path) -> None:
    """Precision against recall per class, the chosen point marked, as one figure (its format from the suffix)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = {c.name: c for c in calibrations}
    figure, axes = plt.subplots(figsize=(7, 5))
    for name, classes in sorted(evidence.items()):
        curve = classes.curve()
        if not curve:
            continue
        line, = axes.plot([r for _, _, r in curve], [p for _, p, _ in curve], label=name, marker=".")
        c = chosen.get(name)
        if c is not None and c.status == "calibrated":
            axes.plot([c.recall], [c.precision], marker="o", markersize=10, fillstyle="none", color=line.get_color())
    axes.set_xlabel("recall (of what reviewers kept or added)")
    axes.set_ylabel("precision (share of pseudo-labels kept)")
    axes.set_xlim(0, 1.02)
    axes.set_ylim(0, 1.02)
    axes.legend(fontsize="small", loc="lower left")
    axes.set_title("pseudo-labels by min_score; circles: the chosen thresholds")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
