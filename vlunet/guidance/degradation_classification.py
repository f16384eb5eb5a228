"""Zero-shot degradation classification with a DegradationCLIP: prompts, label checks, evaluation, reports.

Shared by :class:`~vlunet.models.clip_finetune_model.CLIPFinetuneModel` (validation) and
``scripts/clip_report.py``.

**Label alignment.** The label of a sample is its ``task_index`` (the position of its task in the
dataset's ``tasks`` list, or a benchmark set's ``task_index`` option) and is used as an index into
``degradation_prompts``: both lists must be in the same order, and the sample's ``text`` (its task's
CLIP description) must equal the prompt at that index. :func:`check_labels` verifies this on every
batch and names the mismatching task.

**One scorer.** Images are scored against prompts (logits (B, K) whose argmax is the detected
degradation and whose softmax is the heat-map) by a :class:`PromptScorer`, the one the adapters were
trained with: ``dot`` (raw dot products, the official release and ``PromptCrossEntropyLoss``) or
``cosine`` (temperature × cosine similarity, ``DegradationContrastiveLoss`` and
``MultiPositiveContrastiveLoss``). :func:`scorer_of_loss` gives it for a loss; CLIP fine-tuning
validates with it and records it in every ``net_clip_<iter>.pth`` under :data:`SCORER_KEY` (next to
``params``, so BasicSR's loader still reads the file); :func:`read_scorer` gives it back for a weight
file, so ``vlunet.inference.Restorer`` and ``scripts/inference.py`` detect exactly as validation
scored. Files that record none (converted official files, ``clip_tuned.pth``, official ``.ckpt``)
get the official ``dot`` (DA-CLIP files: DA-CLIP's own, see :func:`scorer_of_checkpoint`).
"""
import math
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from vlunet.losses.daclip.daclip_loss import DACLIPLoss
from vlunet.losses.vlunet.degradation_contrastive_loss import (
    CLIP_INITIAL_TEMPERATURE,
    CLIP_MAX_TEMPERATURE,
    DegradationContrastiveLoss,
    MultiPositiveContrastiveLoss,
    PromptCrossEntropyLoss,
    cosine_logits,
)
from vlunet.metrics.degradation_accuracy_metric import calculate_degradation_accuracy, similarity_matrix
from vlunet.utils.safe_load import safe_torch_load
from vlunet.utils.similarity_heatmap import write_similarity_heatmap

# The official fine-tuning prompts (NHRBL) in the official CLIP class order (note: haze 3, rain 4).
OFFICIAL_PROMPTS = ('image with noise', 'image with many noise', 'image with large amount of noise',
                    'image with haze', 'image with rain', 'image with blur', 'image with low light')

PromptLogits = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (B, D), (K, D) -> (B, K) logits
SCORER_KEY = 'scorer'  # in a CLIP weight file: {'name': 'dot' | 'cosine', 'temperature': float}
SCORER_NAMES = ('dot', 'cosine')
DACLIP_TEMPERATURE_KEY = 'logit_scale'  # a top-level param of DA-CLIP weight files only (DegradationCLIP: backbone.*)


@dataclass(frozen=True)
class PromptScorer:
    """Scores image embeddings (B, D) against prompt embeddings (K, D): logits (B, K).

    ``name``: ``dot`` (raw dot products, no normalisation and no temperature: the official release)
    or ``cosine`` (``temperature`` × cosine similarity). The temperature changes the softmax
    probabilities, never the best prompt.
    """
    name: str = 'dot'
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if self.name not in SCORER_NAMES:
            raise ValueError(f'scorer: unknown {self.name!r}; use one of {", ".join(SCORER_NAMES)} (dot: official '
                             'release / PromptCrossEntropyLoss; cosine: the contrastive losses).')
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) \
                or not math.isfinite(self.temperature) or self.temperature <= 0:
            raise ValueError(f'scorer temperature: expected a positive number, got {self.temperature!r}.')

    def __call__(self, image_embeddings: torch.Tensor, prompt_embeddings: torch.Tensor) -> torch.Tensor:
        if self.name == 'dot':
            return PromptCrossEntropyLoss.prompt_logits(image_embeddings, prompt_embeddings)
        return cosine_logits(image_embeddings, prompt_embeddings, self.temperature)

    def __str__(self) -> str:
        return self.name if self.name == 'dot' else f'cosine:{self.temperature:g}'

    def to_dict(self) -> Dict[str, object]:
        """What :data:`SCORER_KEY` of a weight file holds."""
        return {'name': self.name, 'temperature': float(self.temperature)}

    @classmethod
    def parse(cls, text: str) -> 'PromptScorer':
        """``dot``, ``cosine`` (CLIP's initial temperature 1/0.07) or ``cosine:<temperature>``."""
        name, _, temperature = text.partition(':')
        if name == 'cosine':
            try:
                return cls('cosine', float(temperature) if temperature else CLIP_INITIAL_TEMPERATURE)
            except ValueError as error:
                raise ValueError(f'scorer {text!r}: {error} (e.g. cosine:14.3)') from None
        if temperature:
            raise ValueError(f'scorer {text!r}: only cosine takes a temperature (cosine:<temperature>).')
        return cls(name)


OFFICIAL_SCORER = PromptScorer('dot')


def scorer_of_loss(loss: nn.Module) -> PromptScorer:
    """The scorer a CLIP fine-tuning loss trains the adapters for (cosine: with its current temperature)."""
    declared = getattr(loss, 'prompt_scorer', None)  # (name, temperature) of a loss that declares it (DACLIPLoss)
    if declared is not None:
        return PromptScorer(*declared)
    if isinstance(loss, PromptCrossEntropyLoss):
        return PromptScorer('dot')
    if isinstance(loss, (DegradationContrastiveLoss, MultiPositiveContrastiveLoss)):
        return PromptScorer('cosine', float(loss.temperature.detach()))
    raise ValueError(f'train.clip_opt.type: {type(loss).__name__} has no known prompt scorer; CLIP validation and '
                     'inference detect degradations with the scorer the adapters were trained with: use '
                     'PromptCrossEntropyLoss (dot), DegradationContrastiveLoss or MultiPositiveContrastiveLoss '
                     '(cosine).')


def scorer_of_checkpoint(checkpoint: object, path: str = 'the CLIP weights') -> PromptScorer:
    """The scorer recorded in a loaded CLIP weight file (see the module docstring).

    Our fine-tuning checkpoints saved before the scorer was recorded carry the loss state: a
    ``log_temperature`` there means a cosine loss (temperature clamped to CLIP's 100). DA-CLIP weights
    (a top-level ``logit_scale`` among the params) get DA-CLIP's zero-shot scorer (``DACLIPLoss``). No
    record at all means the official ``dot``.
    """
    if not isinstance(checkpoint, dict):
        return OFFICIAL_SCORER
    record = checkpoint.get(SCORER_KEY)
    if record is not None:
        if not isinstance(record, dict) or not {'name', 'temperature'} <= set(record):
            raise ValueError(f'{path}: {SCORER_KEY!r} must be {{"name": ..., "temperature": ...}}, got {record!r}.')
        try:
            return PromptScorer(record['name'], record['temperature'])
        except ValueError as error:
            raise ValueError(f'{path}: {error}') from None
    log_temperature = (checkpoint.get('loss') or {}).get('log_temperature')
    if isinstance(log_temperature, torch.Tensor):
        return PromptScorer('cosine', min(math.exp(float(log_temperature)), CLIP_MAX_TEMPERATURE))
    if DACLIP_TEMPERATURE_KEY in (checkpoint.get('params') or {}):
        return PromptScorer(*DACLIPLoss.prompt_scorer)
    return OFFICIAL_SCORER


def read_scorer(path: str) -> PromptScorer:
    """:func:`scorer_of_checkpoint` of the CLIP weight file ``path`` (tensors are not read, except a temperature)."""
    checkpoint = safe_torch_load(path, 'degradation-encoder weights', map_location='meta')
    if isinstance(checkpoint, dict) and SCORER_KEY not in checkpoint and 'log_temperature' in (
            checkpoint.get('loss') or {}):
        checkpoint = {'loss': safe_torch_load(path, 'degradation-encoder weights')['loss']}
    return scorer_of_checkpoint(checkpoint, path)


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
        rows = [(name, int((self.labels == k).sum()),
                 calculate_degradation_accuracy(self.probabilities, self.labels, k))
                for k, name in enumerate(self.row_names(prompts)) if (self.labels == k).any()]
        return rows + [('all', len(self.labels), calculate_degradation_accuracy(self.probabilities, self.labels))]


def classify(clip: nn.Module, scorer: PromptLogits, prompts: Sequence[str], batches: Iterable[dict],
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
