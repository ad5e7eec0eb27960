"""`python tests/fsdp_on_cpu.py ARGS` (under torchrun): the omnivec CLI with accelerate's FSDP on CPU
processes (gloo). accelerate turns `ACCELERATE_USE_FSDP` on for GPU processes only; this sets the
state it sets there, its plugin read from the same `FSDP_*` variables (`fsdp_version: 2` and the
rest of configs/accelerate/fsdp_base.yaml)."""

import sys

from accelerate import FullyShardedDataParallelPlugin
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType

accelerate_init = AcceleratorState.__init__


def init_with_fsdp(self, *args, **kwargs):
    accelerate_init(self, *args, **kwargs)
    if self.distributed_type != DistributedType.FSDP:
        self.fsdp_plugin = FullyShardedDataParallelPlugin()
        if self._mixed_precision != "no":
            self.fsdp_plugin.set_mixed_precision(self._mixed_precision)
        self.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP


AcceleratorState.__init__ = init_with_fsdp

from omnivec.cli import main  # noqa: E402

sys.exit(main())
