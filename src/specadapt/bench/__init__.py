"""The ``specadapt bench`` layer: built-in datasets (``datasets``), task scoring (``scoring``) and the runner."""
