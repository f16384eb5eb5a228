"""``python scripts/prepare_datasets.py ...`` from a clone: the ``vlunet-prepare-data`` command
(:mod:`vlunet.commands.prepare_data`)."""
import os.path as osp
import runpy
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # the clone's vlunet, installed or not
runpy.run_module('vlunet.commands.prepare_data', run_name='__main__', alter_sys=True)
