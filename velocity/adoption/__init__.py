"""Adopting legacy data: the seeds' `project_files` variants and `project-files` bucket.

`sources` reads them (never writes), `planning` decides per project what to write and what
to report, `batches` writes a plan as one batch and undoes a batch, `run` ties them together
for the CLI (`velocity adopt`); the `adopt-legacy` flow runs the same steps as tasks.
"""

from velocity.adoption.batches import UndoRefused, UndoReport, undo_batch
from velocity.adoption.planning import AdoptionOptions
from velocity.adoption.report import AdoptionReport, ProjectReport, render_report
from velocity.adoption.run import LegacySources, LegacySurvey, adopt, adopt_project, survey

__all__ = [
    "AdoptionOptions",
    "AdoptionReport",
    "LegacySources",
    "LegacySurvey",
    "ProjectReport",
    "UndoRefused",
    "UndoReport",
    "adopt",
    "adopt_project",
    "render_report",
    "survey",
    "undo_batch",
]
