"""Training utilities: data order, schedule, atomic checkpoints."""

import torch

from prefer.training import BlockOrder, make_scheduler


def test_block_order_covers_each_epoch_once_and_resumes_exactly():
    order = BlockOrder(10, seed=1)
    first_epoch = torch.cat([order.next(4), order.next(4), order.next(2)])
    assert sorted(first_epoch.tolist()) == list(range(10)) and order.epoch == 1
    # a batch crossing the epoch boundary, drawn whole or after a "resume" from the state
    reference = BlockOrder(10, seed=1)
    reference.next(8)
    crossing = reference.next(5)
    resumed = BlockOrder(10, seed=1, **BlockOrder(10, seed=1, epoch=0, cursor=8).state_dict())
    assert torch.equal(resumed.next(5), crossing)
    assert crossing[:2].tolist() == first_epoch[8:].tolist()


def test_schedule_warms_up_then_decays_linearly_to_the_floor():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = make_scheduler(optimizer, total_steps=12, warmup_steps=2, min_lr_fraction=0.1)
    lrs = []
    for _ in range(12):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    # warmup: (0+1)/2, (1+1)/2; then 1 - 0.9 * (step - 2) / 10
    assert lrs[:2] == [0.5, 1.0]
    assert abs(lrs[7] - (1 - 0.9 * 5 / 10)) < 1e-12
    assert abs(scheduler.get_last_lr()[0] - 0.1) < 1e-12
