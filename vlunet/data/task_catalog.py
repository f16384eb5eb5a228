"""The standard all-in-one restoration tasks: their CLIP degradation text and default synthetic degradation.

A task in an option file may omit ``text`` when its name is one of :data:`KNOWN_TASKS` (the texts are
the official fine-tuning prompts, docs/vlunet.md#degradation-prompts), and, when its source is clean images only
(``dataroot_gt`` without ``dataroot_lq``), may omit ``degradations`` too: the default below is used.
Any other name is a user-defined task and must give both.
"""
from typing import Dict, List, NamedTuple


class TaskDefaults(NamedTuple):
    """Defaults of a known task: the CLIP ``text`` and the on-the-fly ``degradations`` list."""
    text: str
    degradations: List[dict]


KNOWN_TASKS: Dict[str, TaskDefaults] = {
    'denoise_15': TaskDefaults('image with noise', [{'type': 'gaussian_noise', 'sigma': 15}]),
    'denoise_25': TaskDefaults('image with many noise', [{'type': 'gaussian_noise', 'sigma': 25}]),
    'denoise_50': TaskDefaults('image with large amount of noise', [{'type': 'gaussian_noise', 'sigma': 50}]),
    'derain': TaskDefaults('image with rain', [{'type': 'rain'}]),
    'dehaze': TaskDefaults('image with haze', [{'type': 'haze'}]),
    'deblur': TaskDefaults('image with blur', [{'type': 'motion_blur'}]),
    'delowlight': TaskDefaults('image with low light', [{'type': 'low_light'}]),
}


def unknown_task_message(key: str, name: str, missing: str) -> str:
    """Error text for a user-defined task ``name`` lacking ``missing`` (``text`` or ``degradations``)."""
    return (f'{key}: task {name!r} is not a known task, so it needs `{missing}`; known tasks (with defaults): '
            f'{", ".join(KNOWN_TASKS)}.')
