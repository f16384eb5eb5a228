"""Train with BasicSR's pipeline and every vlunet component registered.

Usage: ``python vlunet/train.py -opt options/X.yml [--launcher none|pytorch|slurm] [--auto_resume]
[--debug] [--force_yml key:sub=value] [--verbose]``, or ``python -m vlunet.train ...``, or ``vlunet-train ...``.
``--verbose`` also prints the network structure and the option dump on the console (always in the log file).
"""
import os.path as osp
import sys

if __name__ == '__main__' and not __package__:
    # `python vlunet/train.py`: import the package from the repository root, not from vlunet/.
    sys.path[0] = osp.dirname(osp.dirname(osp.abspath(__file__)))


def main() -> None:
    import vlunet  # noqa: F401  (compatibility fixes and registration)
    from vlunet.entry import run_pipeline

    from basicsr.train import train_pipeline
    run_pipeline(train_pipeline, is_train=True)


if __name__ == '__main__':
    main()
