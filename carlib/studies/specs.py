"""Studies: named questions, each with its scientific parameters, run over several seeds.

Following Google's tuning playbook, a study compares values of its *scientific*
parameters; the seed is a nuisance parameter that runs repeat over (R5, R10), and
everything else is held fixed. A :class:`StudySpec` names the question, the scientific
parameters, the metric its verdict uses and the extra figures its summary averages.
"""

from __future__ import annotations

import dataclasses

from carlib.base.registry import Registry

__all__ = ["StudySpec", "STUDIES", "register_study", "get_study", "available_studies"]


@dataclasses.dataclass(frozen=True)
class StudySpec:
    """A study: the question it answers, the parameters whose effect it measures (scientific), its one
    primary ``metric`` (what the summary ranks by and the verdict decides on: a held-out test figure by
    default), and further per-run figures its summary shows but never decides on (``extra``, e.g. the
    validation accuracy that picked the checkpoints, or the epoch time)."""

    name: str
    question: str
    scientific: tuple[str, ...]
    extra: tuple[str, ...] = ()
    metric: str = "test_accuracy_best"


STUDIES: Registry[StudySpec] = Registry("study", "add your own with carlib.register_study(carlib.StudySpec(...))")


def register_study(spec: StudySpec, *, overwrite: bool = False) -> StudySpec:
    """Add a study so summaries know its scientific parameters (how users add their own)."""
    return STUDIES.register(spec.name, spec, overwrite=overwrite)


def get_study(name: str) -> StudySpec:
    """The spec of a known study; an unknown name lists the known ones."""
    return STUDIES.get(name)


def available_studies() -> tuple[str, ...]:
    """Names of the registered studies."""
    return STUDIES.names()


for _spec in (
    StudySpec("lr_study", "Which learning rate and schedule train this backbone best?", ("lr", "schedule"),
              ("val_accuracy_best",)),
    StudySpec("augmentation_study", "Which augmentation helps, and what does it cost per epoch?",
              ("augmentation",), ("val_accuracy_best", "epoch_s")),
    StudySpec("tta_visualization", "Does test-time augmentation help, and do its passes differ?",
              ("tta_preset", "tta_passes"), ("test_accuracy_best", "val_accuracy_tta", "tta_changed_images"),
              metric="test_accuracy_tta"),
    # weights, finetune and epochs tell a pretrained arm from its random-init control and a from-scratch recipe
    StudySpec("backbone_study", "Which backbone at which image size, for what speed?",
              ("backbone", "weights", "finetune", "image_size", "epochs"),
              ("val_accuracy_best", "param_count", "train_images_per_s", "eval_images_per_s", "cpu_s")),
    # A study of fine-tuning compares pretrained nets with from-scratch ones too (weights None, another backbone), at
    # their own sizes and epochs; TTA is part of every arm, so the verdict is on the test figure with TTA.
    StudySpec("finetune_study", "How should a pretrained backbone be fine-tuned, and does it beat training from "
                                "scratch for the CPU time?",
              ("backbone", "weights", "finetune", "bn_mode", "unfreeze_blocks", "image_size", "test_image_size",
               "epochs"), ("test_accuracy_best", "test_accuracy_fixres", "val_accuracy_best", "cpu_s", "epoch_s"),
              metric="test_accuracy_tta"),
    StudySpec("cpu_recipe_study", "Which from-scratch recipe trains best on a CPU within a fixed budget?",
              ("backbone", "backbone_width", "backbone_depth", "image_size", "epochs", "augmentation", "label_smoothing",
               "schedule", "warmup_epochs", "lr"),
              ("test_accuracy_tta", "val_accuracy_best", "epoch_s", "train_images_per_s")),
):
    register_study(_spec)
del _spec
