import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
# the engine runs many tiny ops: one thread avoids OpenMP barrier stalls on a busy 2-core box
torch.set_num_threads(1)
