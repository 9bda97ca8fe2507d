"""Samplers of plugins/sampling.py (kind `sampler`): selections and orders by hand, and limiting
cases that are the plain run (or the plain run restarted) step for step through the engine."""

from __future__ import annotations

import pytest
import torch

from harness.engine import AuxModel, Normalizer, train
from harness.models import SmallCNN
from harness.seams import Batch, EpochPlan, Outputs, Sampler, TrainContext
from harness_plugins import losses as L
from harness_plugins import sampling as S

RECIPE = {"epochs": 3, "batch_size": 16, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": True, "schedule": "onecycle", "warmup_epochs": 0}
N = 64


def toy_data(n=N, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    x = torch.randint(0, 60, (n, 1, 12, 12), generator=g, dtype=torch.uint8)
    for c in range(4):
        r, q = divmod(c, 2)
        x[y == c, :, r * 6 : r * 6 + 6, q * 6 : q * 6 + 6] += 150
    return x, y


def ctx(epochs=RECIPE["epochs"], labels=None):
    return TrainContext(4, (N // 4,) * 4, N, epochs, batch_size=16, steps_per_epoch=N // 16, labels=labels)


def model(seed=0):
    torch.manual_seed(seed)
    return SmallCNN(4, 1, 12, width=4)


def run(parts, *, aux=None, seed=0):
    x, y = toy_data()
    m = model(seed)
    log = train(m, x, y, recipe=RECIPE, parts=parts, normalizer=Normalizer.fit(x), seed=seed, device="cpu", aux=aux)
    return m, log


def same_weights(a, b):
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


class RestartOnly(Sampler):
    """The reference: the engine's own shuffling, with one restart at epoch `at`."""

    def __init__(self, at):
        self.at, self.done = at, False

    def epoch_plan(self, epoch, generator):
        restart = not self.done and epoch == self.at
        self.done |= restart
        return EpochPlan(torch.randperm(N, generator=generator, device=generator.device).cpu(), restart=restart)


def teacher():
    net = model(7).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return {S.PacedCurriculum.TEACHER: AuxModel(net, trainable=False)}


# ---------------------------------------------------------------------------------------------
# the epoch stream
# ---------------------------------------------------------------------------------------------


def test_epoch_stream_cuts_consecutive_passes_over_the_pool_into_epochs_of_fixed_length():
    stream, g = S.EpochStream(5), torch.Generator().manual_seed(0)
    pool = torch.tensor([10, 11, 12])
    first, second = stream.take(pool, g), stream.take(pool, g)
    both = torch.cat([first, second])
    assert len(first) == len(second) == 5
    # 10 visits = three full passes and the first visit of a fourth, whose other two wait for the next epoch
    for k in range(3):
        assert sorted(both[3 * k : 3 * k + 3].tolist()) == [10, 11, 12]
    assert len(stream.pending) == 2 and set(stream.pending.tolist()) < {10, 11, 12}


def test_a_pool_of_the_whole_training_set_is_the_engines_own_shuffle():
    a, b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(S.EpochStream(N).take(torch.arange(N), a), torch.randperm(N, generator=b))


# ---------------------------------------------------------------------------------------------
# self_paced
# ---------------------------------------------------------------------------------------------


def test_self_paced_selects_below_the_threshold_and_grows_it_by_mu_by_hand():
    spl = S.SELF_PACED.create(TrainContext(2, (3, 3), 6, 5), initial_fraction=0.5, growth=2.0)
    g = torch.Generator().manual_seed(0)
    assert sorted(spl.epoch_plan(0, g).order.tolist()) == list(range(6))  # epoch 0: every sample
    spl.record.loss[:] = torch.tensor([0.1, 0.2, 0.3, 0.5, 0.9, 2.0], dtype=torch.float64)
    spl.record.seen[:] = True
    order = spl.epoch_plan(1, g).order  # lambda = median = 0.4: samples 0, 1, 2
    assert spl.threshold == pytest.approx(0.4) and set(order.tolist()) == {0, 1, 2} and len(order) == 6
    order = spl.epoch_plan(2, g).order  # lambda = 0.8: 0..3
    assert set(order.tolist()) == {0, 1, 2, 3}
    order = spl.epoch_plan(3, g).order  # lambda = 1.6: 0..4
    assert set(order.tolist()) == {0, 1, 2, 3, 4}


def test_self_paced_with_every_sample_selected_is_the_plain_run_step_for_step():
    plain, plain_log = run([L.CE.create(ctx())])
    spl, spl_log = run([L.CE.create(ctx()), S.SELF_PACED.create(ctx(), initial_fraction=1.0)])
    assert same_weights(plain, spl) and plain_log.train_loss == spl_log.train_loss


def test_self_paced_leaves_hard_samples_out():
    spl = S.SELF_PACED.create(ctx())
    run([L.CE.create(ctx()), spl])
    assert 0 < int(spl.selected.sum()) < N


# ---------------------------------------------------------------------------------------------
# useful
# ---------------------------------------------------------------------------------------------


def test_useful_separating_epoch_scales_the_papers_8_of_200():
    assert S.USEFUL.create(ctx(epochs=200)).separating_epoch == 8
    assert S.USEFUL.create(ctx(epochs=15)).separating_epoch == 1  # 0.6 rounds to 1: at least one epoch


def test_useful_upsamples_each_classs_higher_loss_cluster_by_hand():
    useful = S.USEFUL.create(TrainContext(2, (4, 4), 8, 10, labels=torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])))
    # class 0: outputs of samples 0, 1 near (5, 0) (learned: low loss), of 2, 3 near (0, 0) (high loss)
    # class 1: samples 4, 5 near (0, 6) (learned), 6, 7 near (1, 1)
    logits = torch.tensor([[5.0, 0.0], [5.2, 0.1], [0.0, 0.1], [0.1, 0.0], [0.0, 6.0], [0.2, 6.1], [1.0, 1.0], [1.1, 0.9]])
    useful.observe(Batch(torch.zeros(8, 1, 2, 2), torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]), torch.arange(8)), Outputs(logits))
    assert sorted(useful.slow_learnable().tolist()) == [2, 3, 6, 7]
    plan = useful.epoch_plan(useful.separating_epoch, torch.Generator().manual_seed(0))
    assert plan.restart and len(plan.order) == 8
    assert sorted(useful.pool.tolist()) == [0, 1, 2, 2, 3, 3, 4, 5, 6, 6, 7, 7]


def test_useful_with_factor_one_is_the_plain_run_restarted_step_for_step():
    ref, ref_log = run([L.CE.create(ctx()), RestartOnly(at=1)])
    useful, useful_log = run([L.CE.create(ctx()), S.USEFUL.create(ctx(), upsample_factor=1)])
    assert ref_log.restarted_at == useful_log.restarted_at == 1
    assert same_weights(ref, useful) and ref_log.train_loss == useful_log.train_loss


def test_useful_restarts_and_trains_on_the_upsampled_distribution():
    useful = S.USEFUL.create(ctx())
    m, log = run([L.CE.create(ctx()), useful])
    ref, _ = run([L.CE.create(ctx()), RestartOnly(at=1)])
    assert log.restarted_at == 1 and len(log.train_loss) == 1 + RECIPE["epochs"]
    assert 0 < len(useful.upsampled) < N and len(useful.pool) == N + len(useful.upsampled)
    assert not same_weights(m, ref)


# ---------------------------------------------------------------------------------------------
# curriculum
# ---------------------------------------------------------------------------------------------


def test_pacing_functions_start_at_b_n_and_reach_n_at_a_t_by_hand():
    linear = S.pacing_function("linear", a=0.5, b=0.2, total_steps=100, total_data=1000)
    assert [linear(s) for s in (0, 25, 50)] == [200, 600, 1000]
    quad = S.pacing_function("quad", a=0.5, b=0.2, total_steps=100, total_data=1000)
    assert [quad(s) for s in (0, 25, 50)] == [200, 400, 1000]
    root = S.pacing_function("root", a=0.5, b=0.0, total_steps=100, total_data=1000)
    assert root(0) == 0 and root(50) == 1000 and root(25) == int(1000 * 0.5**0.5)
    step = S.pacing_function("step", a=0.5, b=0.2, total_steps=100, total_data=1000)
    assert step(49) == 200 and step(50) >= 1000


def test_balanced_order_interleaves_classes_by_difficulty_by_hand():
    order = torch.tensor([4, 0, 5, 1, 2, 3])  # easiest first
    labels = torch.tensor([0, 0, 0, 1, 1, 1])  # class 0: 0, 1, 2; class 1: 3, 4, 5
    # easiest of each class: 4 (rank 0), 0 (rank 1); then 5, 1; then 2, 3
    assert S.balanced_order(order, labels).tolist() == [4, 0, 5, 1, 2, 3]
    assert S.balanced_order(torch.tensor([0, 1, 2, 3, 4, 5]), labels).tolist() == [0, 3, 1, 4, 2, 5]


def test_curriculum_orders_by_the_teachers_loss_and_paces_the_pool():
    cur = S.CURRICULUM.create(ctx(labels=torch.arange(N) % 4), a=0.5, b=0.25, balance=False)
    run([L.CE.create(ctx()), cur], aux=teacher())
    loss = cur.record.loss
    assert bool(cur.record.seen.all()) and bool((loss[cur.order[1:]] >= loss[cur.order[:-1]]).all())
    first = cur.pacing(0)
    assert first == N // 4  # b N


def test_curriculum_draws_the_first_epochs_from_the_easiest_samples():
    cur = S.CURRICULUM.create(ctx(), a=1.0, b=0.0, balance=False)
    cur.order = torch.arange(N).flip(0)  # pretend the scoring is done: N-1 easiest
    plan = cur.epoch_plan(1, torch.Generator().manual_seed(0))
    first_subset = plan.order[: cur.min_subset]
    assert set(first_subset.tolist()) == set(range(N - cur.min_subset, N))  # the easiest two batches


def test_curriculum_starting_with_all_data_is_the_plain_run_after_the_scoring_epoch():
    ref, ref_log = run([L.CE.create(ctx()), RestartOnly(at=1)])
    cur, cur_log = run([L.CE.create(ctx()), S.CURRICULUM.create(ctx(), b=1.0)], aux=teacher())
    assert cur_log.restarted_at == 1 and same_weights(ref, cur) and ref_log.train_loss == cur_log.train_loss
