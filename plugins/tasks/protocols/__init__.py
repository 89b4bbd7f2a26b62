"""Re-implementations of the published papers' evaluation code, used by the ``--protocol`` presets.

``dermino``: the DermINO authors' released evaluation code (segmentation metric, probe budget, kNN ties,
caption scoring); ``panderm``: PanDerm's linear probe. Each function is written from reading the authors'
code (never copied) and is tested on fixed inputs with hand-checked values (tests/test_protocols*.py).
The per-task comparison paper / authors' code / dermbench default / preset is in docs/protocols.md.

Importing this package imports nothing heavy; numpy/torch/nltk are imported inside the functions.
"""

#: names of the protocol presets every task understands (``default`` = no override)
PROTOCOLS = ("default", "dermino", "panderm")
