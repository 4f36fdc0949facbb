"""Training utilities: data order, schedule, optimizer step, loss denominators, stats, checkpoints."""

import pytest
import torch

from prefer.errors import PreferError
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


# ---------------------------------------------------------------- optimizer, denominators, checkpoints


def test_optimizer_and_schedule_from_the_config_sections():
    from prefer.config import OptimizerConfig, ScheduleConfig
    from prefer.training import make_optimizer_and_schedule

    model = torch.nn.Linear(3, 2)  # a matrix (decays) and a bias (does not)
    optimizer, scheduler = make_optimizer_and_schedule(
        [model],
        OptimizerConfig(lr=0.5, weight_decay=0.1, beta1=0.8, beta2=0.9),
        ScheduleConfig(warmup_fraction=0.25, min_lr_fraction=0.2),
        total_steps=10,
    )
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0 and decay["betas"] == (0.8, 0.9)
    assert [p.dim() for p in decay["params"]] == [2] and [p.dim() for p in no_decay["params"]] == [1]
    lrs = []
    for _ in range(10):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    # warmup round(0.25 * 10) = 2 steps -> 0.25, 0.5; then 0.5 * (1 - 0.8 * (step - 2) / 8); step 10 -> 0.5 * 0.2
    assert lrs[:3] == [0.25, 0.5, 0.5] and abs(lrs[6] - 0.5 * (1 - 0.8 * 4 / 8)) < 1e-12
    assert abs(scheduler.get_last_lr()[0] - 0.1) < 1e-12


def test_optimizer_step_clips_steps_and_clears():
    from prefer.training import make_optimizer, make_scheduler, optimizer_step

    weight = torch.nn.Parameter(torch.zeros(2))
    module = torch.nn.Module()
    module.weight = weight
    optimizer = torch.optim.SGD([weight], lr=1.0)
    scheduler = make_scheduler(optimizer, total_steps=4, warmup_steps=1, min_lr_fraction=1.0)
    weight.grad = torch.tensor([3.0, 4.0])  # norm 5, clipped to 1: the step is -(0.6, 0.8)
    norm = optimizer_step([module], optimizer, scheduler, grad_clip=1.0)
    assert norm == 5.0 and torch.allclose(weight.detach(), torch.tensor([-0.6, -0.8])) and weight.grad is None
    assert make_optimizer([module], lr=0.1, weight_decay=0.0, betas=(0.9, 0.95)).param_groups[0]["lr"] == 0.1


def test_per_rank_denominator_makes_ranks_and_micro_batches_agree():
    from prefer.objectives import mle_loss
    from prefer.training import per_rank_denominator

    torch.manual_seed(0)
    logits = torch.randn(4, 3, 5, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(5, (4, 3))
    mask = torch.rand(4, 3) > 0.3
    step_tokens = float(mask.sum())
    whole, _ = mle_loss(logits, targets, mask, num_tokens=step_tokens)
    # 2 ranks with 2 sequences each: each normalises by step_tokens / 2, DDP then averages the two gradients
    halves = [
        mle_loss(
            logits[i : i + 2], targets[i : i + 2], mask[i : i + 2], num_tokens=per_rank_denominator(step_tokens, 2)
        )[0]
        for i in (0, 2)
    ]
    assert torch.allclose(sum(halves) / 2, whole)
    assert per_rank_denominator(12, 4) == 3.0


def test_checkpoint_round_trip_restores_model_optimizer_schedule_rng_and_position(tmp_path):
    from prefer.data.tokenizer import train_tokenizer
    from prefer.models.build import build_model, load_model
    from prefer.training import (
        BlockOrder,
        latest_checkpoint,
        make_optimizer,
        make_scheduler,
        restore_training,
        save_checkpoint,
    )

    tokenizer = train_tokenizer(["abc abd abe\n"] * 20, vocab_size=300)
    torch.manual_seed(0)
    model = build_model("tiny", vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, context=16)
    optimizer = make_optimizer([model], lr=1e-2, weight_decay=0.1, betas=(0.9, 0.95))
    scheduler = make_scheduler(optimizer, total_steps=10, warmup_steps=2, min_lr_fraction=0.1)
    ids = torch.randint(len(tokenizer), (2, 8))
    for _ in range(3):
        model(ids, labels=ids).loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    order = BlockOrder(7, seed=3)
    order.next(5)
    save_checkpoint(
        tmp_path,
        3,
        model=model,
        tokenizer=tokenizer,
        extra={},
        info={"task": "toy"},
        optimizer=optimizer,
        scheduler=scheduler,
        state={"step": 3, "order": order.state_dict(), "data_fingerprint": "d"},
    )
    after_save = torch.rand(3)  # the RNG draw right after the checkpoint

    checkpoint = latest_checkpoint(tmp_path)
    restored = load_model(checkpoint / "model")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), restored.state_dict().values()))
    optimizer2 = make_optimizer([restored], lr=1e-2, weight_decay=0.1, betas=(0.9, 0.95))
    scheduler2 = make_scheduler(optimizer2, total_steps=10, warmup_steps=2, min_lr_fraction=0.1)
    order2, step = restore_training(
        checkpoint,
        optimizer2,
        scheduler2,
        num_items=7,
        seed=3,
        data_fingerprint="d",
        data_name="toy",
        modules=[restored],
    )
    assert step == 3 and scheduler2.get_last_lr() == scheduler.get_last_lr()
    assert torch.equal(torch.rand(3), after_save)  # RNG restored to the moment of saving
    assert torch.equal(order2.next(4), order.next(4))  # the same next batch, across the epoch boundary
    state, state2 = optimizer.state_dict()["state"], optimizer2.state_dict()["state"]
    assert all(torch.equal(state[k]["exp_avg"], state2[k]["exp_avg"]) for k in state)
    with pytest.raises(PreferError, match="changed since this run started"):
        restore_training(
            checkpoint,
            optimizer2,
            scheduler2,
            num_items=7,
            seed=3,
            data_fingerprint="other",
            data_name="toy",
            modules=[restored],
        )


def test_accumulate_stats_adds_loss_shares_and_weights_means():
    from prefer.training import accumulate_stats

    totals: dict[str, float] = {}
    # two micro-batches of a step, 3 and 1 of its 4 sequences: losses are already shares of the step's loss
    accumulate_stats(totals, {"loss": torch.tensor(0.75), "accuracy": torch.tensor(1.0)}, fraction=0.75)
    accumulate_stats(totals, {"loss": torch.tensor(0.25), "accuracy": torch.tensor(0.0)}, fraction=0.25)
    assert totals == {"loss": 1.0, "accuracy": 0.75}  # 0.75 + 0.25; 1.0 x 0.75 + 0.0 x 0.25


def test_the_program_ends_its_torchrun_rank_on_a_clean_finish_and_main_argv_does_not(monkeypatch):
    """`prefer` under torchrun (argv from the command line) ends its rank when its command succeeds (end_rank:
    barrier, destroy_process_group, os._exit(0)); main(argv), which a script may call for several commands, keeps
    the group (a new group while the others are still in the old one hangs), and a failed command exits with its
    code. The two-rank tests in tests/stages/test_distributed.py run end_rank itself."""
    import signal
    import sys

    import prefer.training
    from prefer.cli import main

    ended = []
    monkeypatch.setattr(prefer.training, "end_rank", lambda: ended.append(True))
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["config", "sft"]) == 0 and ended == []
    handler = signal.getsignal(signal.SIGINT)
    try:
        monkeypatch.setattr(sys, "argv", ["prefer", "sft", "train.lx=1"])  # a config error: code 2
        assert main() == 2 and ended == []
        monkeypatch.setattr(sys, "argv", ["prefer", "config", "sft"])
        assert main() == 0 and ended == [True]
    finally:
        signal.signal(signal.SIGINT, handler)  # the program ignores Ctrl-C from its end on; pytest should not
