"""Test (evaluate) with BasicSR's pipeline and every vlunet component registered.

Usage: ``python vlunet/test.py -opt options/X.yml [--launcher none|pytorch|slurm] [--verbose]``, or
``python -m vlunet.test ...``, or ``vlunet-test ...``. ``--verbose`` also prints the network structure and
the option dump on the console (always in the log file).
"""
import os.path as osp
import sys

if __name__ == '__main__' and not __package__:
    # `python vlunet/test.py`: import the package from the repository root, not from vlunet/.
    sys.path[0] = osp.dirname(osp.dirname(osp.abspath(__file__)))


def main() -> None:
    import vlunet  # noqa: F401  (compatibility fixes and registration)
    from vlunet.entry import run_pipeline

    from basicsr.test import test_pipeline
    run_pipeline(test_pipeline, is_train=False)


if __name__ == '__main__':
    main()
