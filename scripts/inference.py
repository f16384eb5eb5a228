"""``python scripts/inference.py ...`` from a clone: the ``vlunet-restore`` command (:mod:`vlunet.commands.restore`)."""
import os.path as osp
import runpy
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # the clone's vlunet, installed or not
runpy.run_module('vlunet.commands.restore', run_name='__main__', alter_sys=True)
