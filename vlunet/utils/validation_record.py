"""Which iteration a validation belongs to: BasicSR's final validation is labelled past ``total_iter``.

BasicSR's training loop keeps counting while it runs out the remaining epochs, so the validation it
calls after the loop gets an iteration beyond ``total_iter`` (e.g. "@ 152 iter" of 150) although it
validates the weights of iteration ``total_iter`` — the weights the last periodic validation already
scored when ``val_freq`` divides ``total_iter``. :meth:`ValidationRecord.iteration` gives that final
validation the label ``total_iter``, or None when that iteration was already validated (the model
then skips it, so nothing is computed, logged or written twice).
"""
from typing import Optional, Set, Tuple, Union

from basicsr.utils import get_root_logger

Iteration = Union[int, str]  # BasicSR's test pipeline passes the experiment name


class ValidationRecord:
    """The (dataset, iteration) pairs validated in this run, and the label of BasicSR's final validation."""

    def __init__(self, opt: dict):
        total_iter = (opt.get('train') or {}).get('total_iter') if opt['is_train'] else None
        self.total_iter = None if total_iter is None else int(total_iter)
        self.validated: Set[Tuple[str, Iteration]] = set()
        self.skip_reported = False

    def iteration(self, dataset_name: str, current_iter: Iteration) -> Optional[Iteration]:
        """The iteration to validate ``dataset_name`` as, or None to skip a repeated final validation."""
        is_final = self.total_iter is not None and isinstance(current_iter, int) and current_iter > self.total_iter
        if is_final:
            current_iter = self.total_iter
            if (dataset_name, current_iter) in self.validated:
                if not self.skip_reported:
                    get_root_logger().info(f'Final validation skipped: the final weights are those of iteration '
                                           f'{current_iter}, validated above.')
                    self.skip_reported = True
                return None
        self.validated.add((dataset_name, current_iter))
        return current_iter
