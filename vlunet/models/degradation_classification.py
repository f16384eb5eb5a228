"""Zero-shot degradation classification with a DegradationCLIP: prompts, label checks, evaluation, reports.

Shared by :class:`~vlunet.models.clip_finetune_model.CLIPFinetuneModel` (validation) and
``scripts/clip_report.py``.

**Label alignment.** The label of a sample is its ``task_index`` (the position of its task in the
dataset's ``tasks`` list, or a benchmark set's ``task_index`` option) and is used as an index into
``degradation_prompts``: both lists must be in the same order, and the sample's ``text`` (its task's
CLIP description) must equal the prompt at that index. :func:`check_labels` verifies this on every
batch and names the mismatching task.
"""
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from vlunet.metrics.degradation_accuracy_metric import calculate_degradation_accuracy, similarity_matrix
from vlunet.utils.similarity_heatmap import write_similarity_heatmap

# The official fine-tuning prompts (NHRBL) in the official CLIP class order (note: haze 3, rain 4).
OFFICIAL_PROMPTS = ('image with noise', 'image with many noise', 'image with large amount of noise',
                    'image with haze', 'image with rain', 'image with blur', 'image with low light')

PromptScorer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (B, D), (K, D) -> (B, K) logits


def parse_prompts(value: object) -> List[str]:
    """``degradation_prompts`` option: a non-empty list of distinct strings (None: :data:`OFFICIAL_PROMPTS`)."""
    if value is None:
        return list(OFFICIAL_PROMPTS)
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f'degradation_prompts: expected a non-empty list of texts, got {value!r}.')
    if len(set(value)) != len(value):
        raise ValueError(f'degradation_prompts: every prompt must be distinct, got {list(value)}.')
    return list(value)


def check_labels(prompts: Sequence[str], labels: torch.Tensor, texts: Optional[Sequence[str]] = None,
                 tasks: Optional[Sequence[str]] = None) -> None:
    """Raise ``ValueError`` when a ``task_index`` has no prompt or its sample's ``text`` is another prompt."""
    for i, label in enumerate(labels.tolist()):
        task = tasks[i] if tasks is not None else f'task_index {label}'
        if not 0 <= label < len(prompts):
            raise ValueError(f'{task}: task_index {label} has no degradation prompt (degradation_prompts has '
                             f'{len(prompts)}); list the dataset tasks and degradation_prompts in the same order.')
        if texts is not None and texts[i] != prompts[label]:
            raise ValueError(f'{task}: its text {texts[i]!r} differs from degradation_prompts[{label}] = '
                             f'{prompts[label]!r}; the dataset tasks and degradation_prompts must be in the same '
                             'order with the same texts.')


@dataclass
class Classification:
    """Softmax prompt probabilities (N, K) of N images, their labels (N,) and the task name of each label seen."""
    probabilities: np.ndarray
    labels: np.ndarray
    task_names: Dict[int, str] = field(default_factory=dict)

    def row_names(self, prompts: Sequence[str]) -> List[str]:
        """A name per prompt index: the task name seen in the data, else the prompt text."""
        return [self.task_names.get(k, prompts[k]) for k in range(len(prompts))]

    def accuracies(self, prompts: Sequence[str]) -> List[tuple]:
        """(name, image count, accuracy %) for each degradation present, then ('all', N, overall)."""
        rows = [(name, int((self.labels == k).sum()), calculate_degradation_accuracy(self.probabilities, self.labels, k))
                for k, name in enumerate(self.row_names(prompts)) if (self.labels == k).any()]
        return rows + [('all', len(self.labels), calculate_degradation_accuracy(self.probabilities, self.labels))]


def classify(clip: nn.Module, scorer: PromptScorer, prompts: Sequence[str], batches: Iterable[dict],
             device: torch.device, description: str = 'Classify', total: Optional[int] = None) -> Classification:
    """Score every batch (``lq``, ``task_index``, optional ``text``/``task``) against the prompts, without grad."""
    probabilities, labels, task_names = [], [], {}
    with torch.no_grad():
        prompt_embeddings = clip.encode_text(list(prompts))
        for batch in tqdm(batches, desc=description, total=total, unit='batch', leave=False):
            batch_labels = torch.as_tensor(batch['task_index']).long()
            check_labels(prompts, batch_labels, batch.get('text'), batch.get('task'))
            task_names.update(zip(batch_labels.tolist(), batch.get('task', [])))
            logits = scorer(clip.encode_degradation(batch['lq'].to(device)), prompt_embeddings)
            probabilities.append(logits.softmax(dim=1).cpu())
            labels.append(batch_labels)
    if not labels:
        raise ValueError(f'{description}: the dataset is empty.')
    return Classification(torch.cat(probabilities).double().numpy(), torch.cat(labels).numpy(), task_names)


def format_accuracy_table(classification: Classification, prompts: Sequence[str]) -> str:
    """A Markdown table: degradation, images, accuracy (%)."""
    lines = ['| Degradation | Images | Accuracy (%) |', '|---|---:|---:|']
    lines += [f'| {name} | {count} | {accuracy:.2f} |' for name, count, accuracy in classification.accuracies(prompts)]
    return '\n'.join(lines) + '\n'


def write_heatmap(classification: Classification, prompts: Sequence[str], title: str, png_path: str,
                  csv_path: str) -> None:
    """The (K, K) mean softmax similarity as a PNG heat-map and CSV (rows: true degradation, columns: prompts)."""
    matrix = similarity_matrix(classification.probabilities, classification.labels)
    write_similarity_heatmap(matrix, classification.row_names(prompts), list(prompts), title, png_path, csv_path)
