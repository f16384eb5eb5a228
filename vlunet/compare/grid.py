"""Side-by-side grids: input | each method | ground truth, captioned, with zoomed crops of one region below.

Each panel is the image scaled to ``panel_width`` pixels wide (nearest-neighbour when enlarged, so
pixels stay visible), captioned with its name, the degradation the method's encoder detected, and its
PSNR against the ground truth (the protocol's first PSNR metric). Below, the same region of every panel
is enlarged to ``panel_width``: the region where the methods' restorations differ most (the square of a
quarter of the shorter side with the largest mean per-pixel standard deviation across the methods), or
the box the user gives; it is outlined on the panels. A method that failed on the image gets a grey
panel that says so. Grids are PNG files ``grids/<set>/<image>.png``.
"""
import os.path as osp
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from vlunet.compare.methods import slug
from vlunet.compare.runner import OK, Comparison, gt_path, input_path
from vlunet.metrics.restoration_metric import metric_arrays, metric_input
from vlunet.utils.atomic_write import atomic_imwrite

from basicsr.metrics import calculate_metric
from basicsr.utils.registry import METRIC_REGISTRY

Box = Tuple[int, int, int, int]  # x, y, width, height in image pixels
GAP = 8
FONT_SIZE = 13
LINE_HEIGHT = 17
CAPTION_LINES = 3
BACKGROUND = (255, 255, 255)
FAILED_PANEL = (200, 200, 200)
TEXT = (20, 20, 20)
OUTLINE = (255, 190, 0)


class Panel(NamedTuple):
    """One column of a grid: ``title``, caption ``lines`` below it, ``image`` uint8 RGB (H, W, 3) or None (failed)."""
    title: str
    lines: Tuple[str, ...]
    image: Optional[np.ndarray]


class GridLayout(NamedTuple):
    """Where things are in a grid image: the (x, y, width, height) of each full ``panels`` entry and of each zoomed
    ``crops`` entry (in panel order), and the zoomed ``box`` in image pixels."""
    panels: List[Box]
    crops: List[Box]
    box: Box


def parse_box(text: str) -> Box:
    """``x,y,width,height`` in image pixels (``--zoom``)."""
    parts = text.split(',')
    if len(parts) != 4 or not all(part.strip().isdigit() for part in parts):
        raise ValueError(f'--zoom {text!r}: expected x,y,width,height in image pixels, e.g. 32,48,64,64.')
    x, y, width, height = (int(part) for part in parts)
    if width < 1 or height < 1:
        raise ValueError(f'--zoom {text!r}: width and height must be at least 1 pixel.')
    return x, y, width, height


def most_different_box(restorations: Sequence[np.ndarray], reference: np.ndarray) -> Box:
    """The square (a quarter of the shorter side) where ``restorations`` (uint8 (H, W, 3) each) differ most from
    each other (per-pixel standard deviation across them; with one restoration: its difference from ``reference``)."""
    height, width = reference.shape[:2]
    side = max(1, min(height, width) // 4)
    stack = np.stack([image.astype(np.float32) for image in restorations] or [reference.astype(np.float32)])
    if len(stack) > 1:
        difference = stack.std(axis=0).mean(axis=2)
    else:
        difference = np.abs(stack[0] - reference.astype(np.float32)).mean(axis=2)
    integral = np.pad(difference.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    sums = integral[side:, side:] - integral[:-side, side:] - integral[side:, :-side] + integral[:-side, :-side]
    y, x = np.unravel_index(int(np.argmax(sums)), sums.shape)
    return int(x), int(y), side, side


def _checked_box(box: Box, height: int, width: int) -> Box:
    x, y, box_width, box_height = box
    if x >= width or y >= height:
        raise ValueError(f'--zoom {x},{y},{box_width},{box_height}: the box starts outside the {width}x{height} image.')
    return x, y, min(box_width, width - x), min(box_height, height - y)


def _scaled(image: np.ndarray, width: int) -> np.ndarray:
    height = max(1, round(image.shape[0] * width / image.shape[1]))
    interpolation = cv2.INTER_NEAREST if width >= image.shape[1] else cv2.INTER_AREA
    return cv2.resize(image, (width, height), interpolation=interpolation)


def _font(size: int = FONT_SIZE):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _fitted(draw: ImageDraw.ImageDraw, text: str, width: int, font) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + '…', font=font) > width:
        text = text[:-1]
    return text + '…'


def render_grid(panels: Sequence[Panel], box: Box, panel_width: int = 256) -> Tuple[Image.Image, GridLayout]:
    """The grid image of ``panels`` (their images all of one size, at least one) with the region ``box`` zoomed, and
    its layout."""
    height, width = next(panel.image for panel in panels if panel.image is not None).shape[:2]
    box = _checked_box(box, height, width)
    panel_height = max(1, round(height * panel_width / width))
    crop_height = max(1, round(box[3] * panel_width / box[2]))
    caption_height = CAPTION_LINES * LINE_HEIGHT + GAP // 2
    canvas = Image.new('RGB', (len(panels) * (panel_width + GAP) + GAP,
                               3 * GAP + panel_height + caption_height + crop_height), BACKGROUND)
    draw, font = ImageDraw.Draw(canvas), _font()
    scale = panel_width / width
    panel_boxes, crop_boxes = [], []
    for index, panel in enumerate(panels):
        left, crop_top = GAP + index * (panel_width + GAP), 2 * GAP + panel_height + caption_height
        panel_boxes.append((left, GAP, panel_width, panel_height))
        crop_boxes.append((left, crop_top, panel_width, crop_height))
        if panel.image is None:
            draw.rectangle([left, GAP, left + panel_width - 1, GAP + panel_height - 1], fill=FAILED_PANEL)
            draw.rectangle([left, crop_top, left + panel_width - 1, crop_top + crop_height - 1], fill=FAILED_PANEL)
        else:
            canvas.paste(Image.fromarray(_scaled(panel.image, panel_width)), (left, GAP))
            x, y, box_width, box_height = box
            crop = panel.image[y:y + box_height, x:x + box_width]
            canvas.paste(Image.fromarray(cv2.resize(crop, (panel_width, crop_height),
                                                    interpolation=cv2.INTER_NEAREST)), (left, crop_top))
            draw.rectangle([left + int(x * scale), GAP + int(y * scale),
                            left + min(panel_width, round((x + box_width) * scale)) - 1,
                            GAP + min(panel_height, round((y + box_height) * scale)) - 1], outline=OUTLINE, width=2)
        for line, text in enumerate((panel.title, *panel.lines)):
            draw.text((left, GAP + panel_height + 2 + line * LINE_HEIGHT), _fitted(draw, text, panel_width, font),
                      fill=TEXT, font=font)
    return canvas, GridLayout(panel_boxes, crop_boxes, box)


def _rgb(path: str) -> Optional[np.ndarray]:
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    return None if image is None else np.ascontiguousarray(image[..., ::-1])


def psnr_metric(metrics: Dict[str, dict]) -> Optional[str]:
    """The protocol's first PSNR metric (the one the captions show), or None."""
    return next((name for name, opt in metrics.items() if 'psnr' in opt['type'].lower()), None)


def _input_psnr(image: np.ndarray, gt: np.ndarray, metric_opt: dict) -> float:
    tensors = [torch.from_numpy(array.astype(np.float32) / 255).permute(2, 0, 1) for array in (image, gt)]
    arrays = metric_arrays(*tensors)
    return float(calculate_metric(arrays[metric_input(METRIC_REGISTRY.get(metric_opt['type']))], metric_opt))


def image_panels(comparison: Comparison, set_name: str, image: str) -> List[Panel]:
    """Input, each method (in order) and ground truth (when there is one) of one image, captioned."""
    gt = _rgb(osp.join(comparison.output, gt_path(set_name, image)))
    lq = _rgb(osp.join(comparison.output, input_path(set_name, image)))
    psnr = psnr_metric(comparison.metrics)
    input_lines = (set_name, f'{psnr} {_input_psnr(lq, gt, comparison.metrics[psnr]):.2f} dB'
                   if psnr and gt is not None and lq is not None else '')
    panels = [Panel('input', input_lines, lq)]
    for run in comparison.methods:
        record = comparison.records[run.spec.name][set_name][image]
        if record.get('status') != OK:
            panels.append(Panel(run.spec.name, ('failed:', record.get('error') or ''), None))
            continue
        value = record.get('metrics', {}).get(psnr) if psnr else None
        panels.append(Panel(run.spec.name, (f'detected: {record.get("degradation") or "- (no encoder)"}',
                                            f'{psnr} {value:.2f} dB' if value is not None else ''),
                            _rgb(osp.join(comparison.output, record['output']))))
    if gt is not None:
        panels.append(Panel('ground truth', ('', ''), gt))
    return panels


def grid_path(set_name: str, image: str) -> str:
    return osp.join('grids', slug(set_name), f'{image}.png')


def write_grids(comparison: Comparison, box: Optional[Box] = None, panel_width: int = 256) -> Dict[str, Dict[str, str]]:
    """Write the grid of every image; {set: {image: grid path relative to the output folder}}. ``box``: the zoomed
    region of every image it starts in (default, and for smaller images: where the methods differ most)."""
    paths: Dict[str, Dict[str, str]] = {}
    for test_set in comparison.sets:
        for image in test_set.names:
            panels = image_panels(comparison, test_set.name, image)
            restorations = [panel.image for panel in panels[1:1 + len(comparison.methods)] if panel.image is not None]
            if panels[0].image is None:
                continue
            height, width = panels[0].image.shape[:2]
            inside = box is not None and box[0] < width and box[1] < height  # else this image's own region
            grid, _ = render_grid(panels, box if inside else most_different_box(restorations, panels[0].image),
                                  panel_width)
            relative = grid_path(test_set.name, image)
            atomic_imwrite(cv2.cvtColor(np.asarray(grid), cv2.COLOR_RGB2BGR), osp.join(comparison.output, relative))
            paths.setdefault(test_set.name, {})[image] = relative
    return paths
