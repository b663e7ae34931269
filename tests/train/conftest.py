"""Makes tests/train/tiny.py importable as ``tiny`` (also from the subprocesses the resume tests start)."""

import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
