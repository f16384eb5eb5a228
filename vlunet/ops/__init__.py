"""The speed machinery below the networks: channels-last products, bands of rows, the channel attention's maths
and hand-written backward, weight layouts, and the device rules that say where each runs
(:mod:`vlunet.ops.dispatch`).

``with vlunet.ops.plain():`` (or ``VLUNET_PLAIN=1`` in the environment) runs every network's plain computation.
"""
from vlunet.ops.dispatch import PLAIN_ENV, plain, plain_requested, whole_maps

__all__ = ['PLAIN_ENV', 'plain', 'plain_requested', 'whole_maps']
