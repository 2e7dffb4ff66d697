"""What tests/test_distributed.py runs under ``torchrun --nproc-per-node 2``.

``distributed_worker.py OUT``: one data-parallel step of a small block stack per (backend,
order, bn sync), and an epoch of the trainer's steps on a small VGG in float64
(``train_steps``); each process saves its outputs, gradients, running statistics and weights to
OUT/rank{R}.pt for the test to compare with one process on the whole batch (``case(...)``
builds the stack and batch both sides use).

``distributed_worker.py fail EPOCH STEP TRAIN_ARGS...``: ``python -m fer_fast train
TRAIN_ARGS`` in which rank 1 raises at step STEP of epoch EPOCH (a failing process)."""
from __future__ import annotations

import contextlib
import sys

import torch
import torch.distributed as dist

from fer_fast import distributed
from fer_fast.stack import ConvBNReLUStack

BACKENDS = ("eager", "fused", "native", "triton")
ORDERS = ("bn_relu", "relu_bn")
#: (out_channels, pool) of the stack's blocks; 7 images of 8x8 (odd: the shards differ in size)
BLOCKS = ((4, False), (6, True), (5, True))
IMAGES, SIZE = 7, 8


def case(backend: str, order: str):
    """(stack, input, output weights) of one case, the same in every process."""
    torch.manual_seed(0)
    stack = ConvBNReLUStack(1, BLOCKS, order=order, backend=backend)
    for block in stack.blocks:  # BatchNorm affine away from (1, 0)
        torch.nn.init.uniform_(block.bn.weight, 0.5, 1.5)
        torch.nn.init.uniform_(block.bn.bias, -0.5, 0.5)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(IMAGES, 1, SIZE, SIZE, generator=gen)
    weights = torch.randn(IMAGES, BLOCKS[-1][0], SIZE // 4, SIZE // 4, generator=gen)
    return stack, x, weights


def step(stack, x, weights, world: int = 1):
    """Output and loss backward of a step whose loss is mean(output * weights) over the global
    batch: this process's share, scaled by ``world`` (DistributedDataParallel averages)."""
    out = stack(x)
    loss = (out.float() * weights).sum() * world / (IMAGES * weights[0].numel())
    loss.backward()
    return out.detach()


def results(stack, out) -> dict:
    return {"out": out.contiguous(),
            **{f"grad/{n}": p.grad.clone() for n, p in stack.named_parameters()},
            **{f"buffer/{n}": b.clone() for n, b in stack.named_buffers()
               if b.is_floating_point()}}


def train_steps(rank: int = 0, world: int = 1) -> dict:
    """The state of a small VGG (eager blocks, float64, dropout on) after one epoch of
    ``fer_fast``'s training steps on this process's rows of each batch: the trainer's loader,
    augmentation, dropout masks, loss share, DistributedDataParallel and synchronized BatchNorm."""
    from fer_fast.config import Config
    from fer_fast.loader import DeviceLoader, load_run_data
    from fer_fast.model import VGG
    from fer_fast.step import TrainStep, augment_batch, make_optimizer

    data = load_run_data(None, seed=0, synthetic_sizes=(44, 8, 8))  # 2 batches: 32 + 12
    torch.manual_seed(0)
    model = VGG(width=0.0625, dropout=0.2).double()
    net = distributed.data_parallel(model, torch.device("cpu")) if world > 1 else model
    step = TrainStep(net, make_optimizer(Config(lr=0.05), model.parameters()),
                     torch.amp.GradScaler("cpu", enabled=False), device_type="cpu")
    loader = DeviceLoader(data.train, batch_size=32, device="cpu", rank=rank, world=world)
    with distributed.bn_sync() if world > 1 else contextlib.nullcontext():
        for batch in loader.batches(1):  # the crops in float64 (the augmentation is fp32)
            crops, labels = augment_batch(batch.images, batch.params, batch.labels,
                                          backend="eager")
            step.on_crops(crops.double(), labels, batch.shard)
    return {k: v.clone() for k, v in model.state_dict().items()}


def main(out_dir: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    saved = {}
    for backend in BACKENDS:
        for order in ORDERS:
            for sync in ("global", "local"):
                stack, x, weights = case(backend, order)
                ddp = distributed.data_parallel(stack, torch.device("cpu"))
                first, stop = distributed.shard(IMAGES, rank, world)
                scope = distributed.bn_sync() if sync == "global" else contextlib.nullcontext()
                with scope:
                    out = step(ddp, x[first:stop], weights[first:stop], world)
                saved[(backend, order, sync)] = results(stack, out)
    saved["train_steps"] = train_steps(rank, world)
    torch.save(saved, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


def train_failing(epoch: int, step_index: int, argv: list[str]) -> int:
    from fer_fast import train

    real_step = train.TrainStep.__call__
    calls = {"n": 0}
    steps_per_epoch = {}

    def failing(self, *args):
        calls["n"] += 1
        if dist.get_rank() == 1 and calls["n"] == steps_per_epoch["n"] * (epoch - 1) + step_index:
            raise RuntimeError(f"rank 1 fails at step {step_index} of epoch {epoch}")
        return real_step(self, *args)

    real_setup = train.setup

    def setup(*args, **kwargs):
        run = real_setup(*args, **kwargs)
        steps_per_epoch["n"] = len(run.loader)
        return run

    train.TrainStep.__call__ = failing
    train.setup = setup
    return train.main(argv)


if __name__ == "__main__":
    if sys.argv[1] == "fail":
        sys.exit(train_failing(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]))
    main(sys.argv[1])
