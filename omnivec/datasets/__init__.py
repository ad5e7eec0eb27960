"""Reading users' data: manifests, folder trees, shards and Hugging Face datasets (sources.py), one
reader per modality, collate and mixing."""

from .check import check_path, format_report
from .dataset import Collate, TaskDataset
from .readers import extensions, load_sample, modality_of, read_file
from .records import TaskData
from .sampler import MultiModalLoader
from .sources import find_tasks, load_task

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
