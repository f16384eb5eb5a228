"""``python scripts/export.py ...`` from a clone: the ``vlunet-export`` command (:mod:`vlunet.commands.export`)."""
import os.path as osp
import runpy
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # the clone's vlunet, installed or not
runpy.run_module('vlunet.commands.export', run_name='__main__', alter_sys=True)
