import os
import sys

import torch

# Without a GPU the Triton kernels run through the interpreter on CPU tensors; this must be set
# before triton is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, os.path.dirname(__file__))
# the engine runs many tiny ops: one thread avoids OpenMP barrier stalls on a busy 2-core box
torch.set_num_threads(1)
