import os
import sys

# The harness module sits next to the test files.
sys.path.insert(0, os.path.dirname(__file__))
