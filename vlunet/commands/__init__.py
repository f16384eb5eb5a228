"""The user commands installed as console scripts (``vlunet-restore``, ``vlunet-convert``, ``vlunet-export``,
``vlunet-prepare-data``); each is also ``python scripts/<name>.py`` from a clone."""
