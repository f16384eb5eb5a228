"""Start-up pieces shared by vlunet's entry points (:mod:`vlunet.entry`) and BasicSR's own
(:mod:`vlunet.basicsr_entry_points`): the option check of the command line, the rank argument, the output root."""
import argparse
import glob
import os
import os.path as osp
import site
import sys
import sysconfig
from typing import List

from vlunet.options import OptionError, check_option_file

VERBOSE_FLAG = '--verbose'  # ours: the network structure, option dump and tracebacks on the console


def normalize_local_rank_argument(argv: List[str]) -> List[str]:
    """Return ``argv`` with ``--local-rank`` (torch >= 2.0 launcher) as ``--local_rank`` (BasicSR knows only that)."""
    return ['--local_rank' + arg[len('--local-rank'):] if arg.startswith('--local-rank') else arg for arg in argv]


def check_command_line(argv: List[str], is_train: bool) -> None:
    """Check the ``-opt`` file with the ``--force_yml`` overrides applied, as BasicSR will use it.

    Exits with the problems (printed by rank 0 only) before anything is created; prints the warnings.
    """
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument('-opt')
    parser.add_argument('--force_yml', nargs='+')
    parser.add_argument('--auto_resume', action='store_true')
    known, _ = parser.parse_known_args(argv[1:])
    if known.opt is None:
        return  # BasicSR's parser reports the missing -opt
    is_rank_0 = int(os.environ.get('RANK', 0)) == 0
    try:
        warnings = check_option_file(known.opt, is_train, known.force_yml, known.auto_resume)
    except OptionError as err:
        sys.exit(f'error: {err}' if is_rank_0 else 1)
    for warning in warnings if is_rank_0 else ():
        print(f'warning: {known.opt}: {warning}', file=sys.stderr, flush=True)


def is_site_packages(folder: str) -> bool:
    """A folder of installed distributions (a site directory, or one holding ``*.dist-info``)."""
    folders = {sysconfig.get_paths()[key] for key in ('purelib', 'platlib')}
    folders.update(site.getsitepackages() + [site.getusersitepackages()])
    is_site_dir = osp.realpath(folder) in {osp.realpath(f) for f in folders}
    return is_site_dir or bool(glob.glob(osp.join(folder, '*.dist-info')))


def output_root(root_path: str) -> str:
    """The current directory instead of a site-packages folder as BasicSR's ``root_path``."""
    return os.getcwd() if is_site_packages(root_path) else root_path
