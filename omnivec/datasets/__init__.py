"""Reading users' data: manifests and folder trees, one reader per modality, collate and mixing."""

from .check import check_path, format_report
from .dataset import Collate, TaskDataset
from .manifest import TaskData, find_tasks, load_task
from .readers import extensions, load_sample, modality_of, read_file
from .sampler import MultiModalLoader

__all__ = [
    "Collate",
    "MultiModalLoader",
    "TaskData",
    "TaskDataset",
    "check_path",
    "find_tasks",
    "extensions",
    "format_report",
    "load_sample",
    "load_task",
    "modality_of",
    "read_file",
]
