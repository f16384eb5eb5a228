"""``python scripts/convert_official_checkpoint.py ...`` from a clone: the ``vlunet-convert`` command
(:mod:`vlunet.commands.convert`)."""
import os.path as osp
import runpy
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # the clone's vlunet, installed or not
runpy.run_module('vlunet.commands.convert', run_name='__main__', alter_sys=True)
