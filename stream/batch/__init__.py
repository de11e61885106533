"""``emostream batch``: many video and image files, one dataset (in-process, or on Ray actors).

    from stream.batch import BatchOptions, find_inputs, run_batch
    inputs, warnings = find_inputs(["archive/"])
    report = run_batch(inputs, Path("out"), load_config(None), BatchOptions(parallel=4))
    pd.read_parquet("out/faces.parquet")
"""

from __future__ import annotations

from stream.batch.inputs import InputFile, find_inputs
from stream.batch.job import BatchOptions, JobReport, Outcome, run_batch

__all__ = ["BatchOptions", "InputFile", "JobReport", "Outcome", "find_inputs", "run_batch"]
