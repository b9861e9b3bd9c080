"""Global-batch balance loss (moe.balance global_loss): f from every micro-batch and rank of the update."""

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from smx.moe import MoEConfig, MoEFeedForward
from smx.moe.losses import load_balance_loss

E = 4


def layer(balance, seed=0):
    torch.manual_seed(seed)
    return MoEFeedForward(6, 12, MoEConfig(num_experts=E, k=1, estimator="topk", balance=balance))


def routed(m, x):
    """(probs (T, E), expert_index (T, 1)) the layer's router and estimator give x."""
    r = m.estimator(m.router(x), k=1, training=True)
    return r.probs, r.expert_index


def test_one_process_one_micro_batch_is_the_local_loss_value_and_gradient():
    x = torch.randn(2, 7, 6)
    pad = torch.zeros(2, 7, dtype=torch.bool)
    pad[0, 5:] = True
    grads = []
    losses = []
    for balance in ("loss", "global_loss"):
        m = layer(balance)
        m.set_num_updates(0)
        out = m(x, padding_mask=pad)
        out.balance_loss.backward()
        losses.append(out.balance_loss.detach())
        grads.append(m.router.proj.weight.grad.clone())
    torch.testing.assert_close(losses[0], losses[1])
    torch.testing.assert_close(grads[0], grads[1])


def test_later_micro_batches_use_the_counts_of_the_update_so_far_and_a_new_update_starts_again():
    m = layer("global_loss")
    x1, x2, x3 = torch.randn(10, 6), torch.randn(6, 6), torch.randn(8, 6)
    m.set_num_updates(0)
    p1, i1 = routed(m, x1)
    p2, i2 = routed(m, x2)
    first = m(x1).balance_loss
    m.set_num_updates(0)  # the second micro-batch of update 0
    second = m(x2).balance_loss
    torch.testing.assert_close(first, load_balance_loss(p1, i1))
    pooled = torch.bincount(torch.cat([i1, i2]).reshape(-1), minlength=E).float() / 16
    torch.testing.assert_close(second, E * (pooled * p2.mean(0)).sum())
    assert not torch.allclose(second, load_balance_loss(p2, i2))  # the local loss differs
    m.set_num_updates(1)
    p3, i3 = routed(m, x3)
    torch.testing.assert_close(m(x3).balance_loss, load_balance_loss(p3, i3))
    m.eval()  # validation: the local loss, nothing counted
    torch.testing.assert_close(m(x2).balance_loss, load_balance_loss(*_eval_routed(m, x2)))


def _eval_routed(m, x):
    r = m.estimator(m.router(x), k=1, training=False)
    return r.probs, r.expert_index


def _rank(rank: int, world: int, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        m = layer("global_loss")  # the same weights on both ranks
        x = torch.randn(12 + 4 * rank, 6, generator=torch.Generator().manual_seed(10 + rank))
        m.set_num_updates(0)
        loss = m(x).balance_loss
        probs, index = routed(m, x)
        torch.save({"loss": loss.detach(), "probs": probs.detach(), "index": index, "local": load_balance_loss(
            probs, index).detach()}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_pool_their_counts(tmp_path):
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.start_processes(_rank, args=(2, init, str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    r = [torch.load(tmp_path / f"rank{i}.pt") for i in range(2)]
    counts = torch.bincount(torch.cat([r[0]["index"], r[1]["index"]]).reshape(-1), minlength=E).float()
    f = counts / counts.sum()  # 12 + 16 tokens of both ranks
    for rank in range(2):
        expected = E * (f * r[rank]["probs"].mean(0)).sum()
        torch.testing.assert_close(r[rank]["loss"], expected)
        assert abs(float(r[rank]["loss"] - r[rank]["local"])) > 1e-4  # not the local loss
