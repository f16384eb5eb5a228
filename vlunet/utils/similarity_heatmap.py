"""Image-text similarity heat-map (paper Fig. 5) as a labelled PNG drawn with OpenCV, plus the same matrix as CSV.

Rows: true degradations; columns: prompts; cell = mean softmax similarity, written in the cell.
A colour bar on the right maps colours to values (0 to 1, viridis). Rows without images (NaN) are
drawn grey and written empty in the CSV.
"""
import csv
import io
from typing import List, Sequence

import cv2
import numpy as np

from vlunet.utils.atomic_write import atomic_imwrite, atomic_write_text

CELL = 72
MARGIN = 12
FONT = cv2.FONT_HERSHEY_SIMPLEX
FONT_SCALE = 0.45
GREY = (160, 160, 160)
BAR_WIDTH = 18
BAR_TICKS = (0.0, 0.25, 0.5, 0.75, 1.0)


def _text_width(text: str) -> int:
    return cv2.getTextSize(text, FONT, FONT_SCALE, 1)[0][0]


def _cells(matrix: np.ndarray) -> np.ndarray:
    """The colour-mapped cell grid (rows*CELL, cols*CELL, 3) with values written inside."""
    values = np.nan_to_num(np.clip(matrix, 0, 1), nan=0)
    grid = cv2.applyColorMap((values * 255).round().astype(np.uint8), cv2.COLORMAP_VIRIDIS)
    grid = cv2.resize(grid, (matrix.shape[1] * CELL, matrix.shape[0] * CELL), interpolation=cv2.INTER_NEAREST)
    for (r, c), value in np.ndenumerate(matrix):
        top_left, bottom_right = (c * CELL, r * CELL), ((c + 1) * CELL - 1, (r + 1) * CELL - 1)
        if np.isnan(value):
            cv2.rectangle(grid, top_left, bottom_right, GREY, thickness=-1)
            continue
        colour = (0, 0, 0) if value > 0.6 else (255, 255, 255)  # dark text on the bright end of viridis
        text = f'{value:.2f}'
        cv2.putText(grid, text, (c * CELL + (CELL - _text_width(text)) // 2, r * CELL + CELL // 2 + 5), FONT,
                    FONT_SCALE, colour, 1, cv2.LINE_AA)
    return grid


def colour_bar(height: int) -> np.ndarray:
    """The value scale of the cells: (height, BAR_WIDTH + tick labels, 3), 1 at the top, 0 at the bottom."""
    values = np.linspace(1, 0, height)[:, None].repeat(BAR_WIDTH, axis=1)
    bar = cv2.applyColorMap((values * 255).round().astype(np.uint8), cv2.COLORMAP_VIRIDIS)
    labels = np.full((height, 2 * MARGIN + max(_text_width(f'{t:.2f}') for t in BAR_TICKS), 3), 255, np.uint8)
    for tick in BAR_TICKS:
        y = round((1 - tick) * (height - 1))
        cv2.line(labels, (0, y), (MARGIN // 2, y), (0, 0, 0), 1)
        text_y = min(max(y + 5, 10), height - 2)
        cv2.putText(labels, f'{tick:.2f}', (MARGIN // 2 + 3, text_y), FONT, FONT_SCALE, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([bar, labels], axis=1)


def _vertical_labels(labels: Sequence[str], height: int) -> np.ndarray:
    """Column labels written bottom-to-top, one per CELL-wide column: (height, len*CELL, 3)."""
    strip = np.full((len(labels) * CELL, height, 3), 255, np.uint8)
    for i, label in enumerate(labels):
        cv2.putText(strip, label, (6, i * CELL + CELL // 2 + 5), FONT, FONT_SCALE, (0, 0, 0), 1,
                    cv2.LINE_AA)
    return cv2.rotate(strip, cv2.ROTATE_90_COUNTERCLOCKWISE)


def draw_heatmap(matrix: np.ndarray, row_labels: Sequence[str], column_labels: Sequence[str],
                 title: str) -> np.ndarray:
    """A BGR uint8 image of ``matrix`` (R, C) with row/column labels, a colour bar and a title."""
    if matrix.shape != (len(row_labels), len(column_labels)):
        raise ValueError(f'matrix {matrix.shape} does not match {len(row_labels)} rows x {len(column_labels)} columns')
    label_width = max(_text_width(label) for label in row_labels) + 2 * MARGIN
    header = max(_text_width(label) for label in column_labels) + 2 * MARGIN
    grid = _cells(matrix)
    bar = colour_bar(grid.shape[0])
    bar_left = label_width + grid.shape[1] + MARGIN
    height, width = grid.shape[0] + header + 3 * MARGIN, bar_left + bar.shape[1]
    canvas = np.full((height, max(width, _text_width(title) + 2 * MARGIN), 3), 255, np.uint8)
    top = header + 3 * MARGIN
    canvas[top:top + grid.shape[0], label_width:label_width + grid.shape[1]] = grid
    canvas[top:top + grid.shape[0], bar_left:bar_left + bar.shape[1]] = bar
    canvas[3 * MARGIN:top, label_width:label_width + grid.shape[1]] = _vertical_labels(column_labels, header)
    for r, label in enumerate(row_labels):
        cv2.putText(canvas, label, (MARGIN, top + r * CELL + CELL // 2 + 5), FONT, FONT_SCALE, (0, 0, 0), 1,
                    cv2.LINE_AA)
    cv2.putText(canvas, title, (MARGIN, 2 * MARGIN), FONT, FONT_SCALE, (0, 0, 0), 1, cv2.LINE_AA)
    return canvas


def format_similarity_csv(matrix: np.ndarray, row_labels: Sequence[str], column_labels: Sequence[str]) -> str:
    """CSV text: header ``true \\ prompt, <columns>``, one row per true degradation (NaN written empty)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator='\n')
    writer.writerow(['true \\ prompt', *column_labels])
    for label, row in zip(row_labels, matrix):
        writer.writerow([label, *('' if np.isnan(v) else f'{v:.6f}' for v in row)])
    return buffer.getvalue()


def write_similarity_heatmap(matrix: np.ndarray, row_labels: List[str], column_labels: List[str], title: str,
                             png_path: str, csv_path: str) -> None:
    """Write the heat-map PNG and the CSV (atomically)."""
    atomic_imwrite(draw_heatmap(matrix, row_labels, column_labels, title), png_path)
    atomic_write_text(format_similarity_csv(matrix, row_labels, column_labels), csv_path)
