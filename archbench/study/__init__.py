"""The study stage: run a like-for-like comparison of backbones (arms x sweep x seeds at matched compute).

``python -m archbench.study STUDY`` (see :mod:`archbench.commands.study`); in code::

    from archbench.study import load_study, run_study
    result = run_study(load_study("families_cpu", ["seeds=[0]"]))
"""

from archbench.study.runner import StudyResult, plan_study, run_study
from archbench.study.schema import StudySpec
from archbench.study.spec import StudyError, load_study, study_names

__all__ = ["StudyError", "StudyResult", "StudySpec", "load_study", "plan_study", "run_study", "study_names"]
