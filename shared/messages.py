"""Task messages: one pydantic schema per task, and the one table of task names and queues.

A message carries references (the store's folder, cohort and patient names, file paths, a model
id) and the settings, never arrays. The coordinator builds it; the worker validates it with the
same schema before any work (:func:`dtlr.shared.celery_app.stage_task`), so a malformed or
hostile message is refused before the file system is touched. ``units()`` names the status
records a task will write, so whoever runs it can record a failure for each of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from dtlr.shared.config import Settings, shipped_params
from dtlr.shared.stage import COHORT, Unit
from dtlr.shared.store import COHORT_PATTERN, PATIENT_ID_PATTERN

CohortName = Annotated[str, StringConstraints(pattern=COHORT_PATTERN, max_length=128)]
PatientId = Annotated[str, StringConstraints(pattern=PATIENT_ID_PATTERN, max_length=128)]
ModelId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{16}$")]


class TaskMessage(BaseModel):
    """What every task message carries: the store, the submission and the settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    store_root: str
    submission: str = Field("", max_length=64)
    job: str = Field("", max_length=64)  # the coordinator's id for this piece of work
    settings: Settings = Settings()

    def units(self) -> list[Unit]:
        """The status records this task writes."""
        raise NotImplementedError

    def files(self) -> list[str]:
        """Files outside the store this task reads (a worker checks them against its roots).

        Only what the task itself opens: an extraction reads the images, masks and the
        pyradiomics parameter file, a fine-tuning the initial weights, an embedding nothing
        outside the store (settings name other files that this task never touches).
        """
        return []


class ExtractMessage(TaskMessage):
    """Extract one patient: N4, pyradiomics for each reader's mask, max slices."""

    cohort: CohortName
    patient_id: PatientId
    image: str
    mask: str
    mask_reader2: str | None = None
    # the segment (ROI) of a DICOM SEG, RTSTRUCT or Slicer .seg.nrrd mask, for each reader
    mask_segment: str | None = Field(None, max_length=1024)
    mask_segment_reader2: str | None = Field(None, max_length=1024)
    mask_label: int | None = Field(None, ge=1, le=2**31 - 1)  # overrides the parameter file's

    def units(self) -> list[Unit]:
        return [Unit(self.cohort, self.patient_id, "extract")]

    def files(self) -> list[str]:
        params = self.settings.radiomics.params
        return [*([params] if params not in shipped_params() else []), self.image, self.mask,
                *([self.mask_reader2] if self.mask_reader2 else [])]

    def row(self) -> dict[str, str | int | None]:
        """The patient's manifest fields the extraction reads."""
        return {"cohort": self.cohort, "patient_id": self.patient_id, "image": self.image,
                "mask": self.mask, "mask_reader2": self.mask_reader2,
                "mask_segment": self.mask_segment,
                "mask_segment_reader2": self.mask_segment_reader2,
                "mask_label": self.mask_label}


class FinetuneMessage(TaskMessage):
    """Fine-tune the CNN on a training cohort (with protocol paper: and the extra cohorts)."""

    cohort: CohortName
    extra_cohorts: list[CohortName] = []
    fold: int | None = Field(None, ge=0, le=100)  # a cross-fitted CNN leaving out this fold

    def units(self) -> list[Unit]:
        return [Unit(self.cohort, COHORT, "finetune")]

    def files(self) -> list[str]:
        weights = self.settings.cnn.weights
        return [] if weights in ("imagenet", "random") else [weights]


class EmbedMessage(TaskMessage):
    """Write the DTL features of a batch of one cohort's patients with one fine-tuned CNN."""

    cohort: CohortName
    model_id: ModelId
    patient_ids: list[PatientId] = Field(min_length=1, max_length=100_000)

    def units(self) -> list[Unit]:
        return [Unit(self.cohort, pid, "embed") for pid in self.patient_ids]


@dataclass(frozen=True)
class TaskSpec:
    """A task's name, the queue that serves it, and its message schema."""

    name: str
    queue: str
    message: type[TaskMessage]


# The one place where task names, queues and schemas are declared.
TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in (
    TaskSpec("dtlr.extract", "cpu", ExtractMessage),
    TaskSpec("dtlr.finetune", "gpu", FinetuneMessage),
    TaskSpec("dtlr.embed", "gpu", EmbedMessage),
)}
QUEUES = ("cpu", "gpu")
