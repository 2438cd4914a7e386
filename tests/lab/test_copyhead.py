"""The copy read path of the open-set experiment: its batched write equals a per-example delta-rule loop, and a
written token is read back as the argmax when queried with its key."""
import pytest
import torch
import torch.nn.functional as F

from lab.openset_copyhead import CopyHead, Feats
from tests.conftest import tiny_llama


def _feats(g, n_w, n_r, d, vocab):
    return Feats(torch.randn(n_w, d, generator=g), torch.randint(0, vocab, (n_w,), generator=g),
                 torch.randn(n_r, d, generator=g), torch.randint(0, vocab, (n_r,), generator=g))


def test_batched_write_equals_a_naive_loop():
    model = tiny_llama()
    torch.manual_seed(1)
    head = CopyHead(model, rank=5)
    with torch.no_grad():
        head.beta.weight.normal_(0, 0.3)
    g = torch.Generator().manual_seed(0)
    feats = [_feats(g, n, 3, 64, 97) for n in (1, 7, 4)]
    S = head.write(feats)
    with torch.no_grad():  # the in-place evaluation path
        torch.testing.assert_close(head.write(feats), S.detach(), atol=1e-6, rtol=1e-5)
    for b, f in enumerate(feats):
        ref = torch.zeros(64, 5)
        for t in range(len(f.write_tok)):
            k = F.normalize(head.wk(f.key_h[t]), dim=-1)
            beta = torch.sigmoid(head.beta(f.key_h[t]))
            ref = ref + beta * torch.outer(head.E[f.write_tok[t]] - ref @ k, k)
        torch.testing.assert_close(S[b], ref, atol=1e-5, rtol=1e-5)


def test_a_written_token_is_read_back_by_its_key():
    model = tiny_llama()
    head = CopyHead(model, rank=16, beta_bias=20.0, gate_bias=5.0, tau=200.0)
    g = torch.Generator().manual_seed(3)
    key = torch.randn(1, 64, generator=g)
    f = Feats(key, torch.tensor([42]), key.clone(), torch.tensor([42]))
    with torch.no_grad():
        logits, tgt, _ = head.logits(model, head.write([f]), [f])
        assert logits.argmax(-1).item() == 42
        other = head.write([_feats(g, 1, 1, 64, 97)])  # another conversation's state does not carry it
        logits2, _, _ = head.logits(model, other, [f])
        assert logits2[0, 42] < logits[0, 42]


def test_one_pass_tied_read_equals_lm_head_plus_read():
    from lab.copy_generate import _logits_with_read

    model = tiny_llama()
    model.lm_head.weight = model.get_input_embeddings().weight  # tied, as SmolLM2
    head = CopyHead(model, rank=4)
    g = torch.Generator().manual_seed(5)
    h, u = torch.randn(3, 64, generator=g), torch.randn(3, 64, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(_logits_with_read(model, head, h, u), model.lm_head(h) + u @ head.E.T,
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("tok_rank", [0, 2])
def test_copy_read_state_of_write_groups_equals_a_naive_loop(tok_rank):
    """lab.copy_read's state (the product's scan): write groups concatenated in order, given β, keys from W_k (and,
    with token keys, from the token before each written one) — lab.copy_gate's per-token delta-rule loop."""
    from lab.copy_gate import write
    from lab.copy_read import state

    model = tiny_llama()
    torch.manual_seed(2)
    head = CopyHead(model, rank=3, tok_rank=tok_rank)
    g = torch.Generator().manual_seed(7)

    def group(n):
        return (torch.randn(n, 64, generator=g), torch.randint(0, 97, (n,), generator=g), torch.rand(n, generator=g),
                torch.randint(0, 97, (n,), generator=g))

    rows = [[group(2), group(9)], [group(1)], [group(0), group(4)]]
    S = state(head, rows)
    assert S.shape[-1] == 3 + tok_rank
    for b, groups in enumerate(rows):
        kh, tok, beta, prev = (torch.cat([grp[i] for grp in groups]) for i in range(4))
        ref = write(head, Feats(kh, tok, torch.zeros(0, 64), torch.zeros(0, dtype=torch.long), key_prev=prev), beta)
        torch.testing.assert_close(S[b], ref, atol=1e-5, rtol=1e-5)
    S.sum().backward()  # differentiable in W_k (and W_t)
    assert head.wk.weight.grad is not None and head.wk.weight.grad.abs().sum() > 0
    if tok_rank:
        assert head.wt.weight.grad.abs().sum() > 0


def test_coverage_removes_an_emitted_tokens_value_direction():
    """lab.copy_generate with coverage 1: after the copied token is emitted the state no longer holds its value, so
    it is not read back again (without coverage it is)."""
    from lab.copy_generate import generate_batch

    model = tiny_llama()  # untied: a tied random model tends to repeat its input token by itself
    head = CopyHead(model, rank=8, gate_bias=5.0, tau=500.0)
    S = torch.zeros(1, 64, 8)
    S[0] = torch.outer(head.E[42], torch.ones(8) / 8 ** 0.5) * 8  # every query reads token 42
    with torch.no_grad():
        rep, _ = generate_batch(model, [[1, 2, 3]], eos=0, max_new=3, head=head, S=S)
        rep_cov, _ = generate_batch(model, [[1, 2, 3]], eos=0, max_new=3, head=head, S=S, coverage=1.0)
    assert rep[0] == [42, 42, 42]
    assert rep_cov[0][0] == 42 and 42 not in rep_cov[0][1:]


def test_token_keys_match_the_same_preceding_token_exactly():
    """Token keys: the key part from the token before a written one and the query part from the token at a reading
    position share W_t, so the same token gives cosine 1 there whatever the hidden states."""
    model = tiny_llama()
    head = CopyHead(model, rank=3, tok_rank=4)
    with torch.no_grad():
        head.mix.fill_(torch.pi / 2)  # the token part only
    ids = torch.tensor([5, 17, 5])
    k = head.keys(torch.randn(3, 64), ids)
    q = head.queries(torch.randn(3, 64), ids)
    assert k.shape == (3, 7)
    same = ids[:, None] == ids[None]  # pairs (0, 0), (0, 2), (2, 0), (1, 1), (2, 2)
    torch.testing.assert_close((k @ q.T)[same], torch.ones(int(same.sum())), atol=1e-5, rtol=0)
    assert (k @ q.T)[~same].abs().max() < 0.999
