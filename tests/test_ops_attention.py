"""Attention and embeddings on shares: F.scaled_dot_product_attention, nn.MultiheadAttention (train and eval, batch
first or not, need_weights, masks), the fused eval-mode kernels, nn.Embedding with public, owner-shared and secret
ids, a ViT-style block (class token, positional embeddings, mean pooling) and nn.TransformerEncoder, against float64
torch on the same inputs, with exact communication costs.

Tolerances (f = 20, ulp = 2^-20 = 9.5e-7):
  ATOL_ATTN = 5e-5 for outputs and gradients of O(1) attention. The softmax errs by <= 3e-6 per weight
    (protocols/approx.py); an output sums S weights times values |v| <= ~3 (S <= 6: <= 5.4e-5 if every error had
    the same sign; they do not, measured ~5e-6), each product adds 1 ulp and the inputs' rounding (0.5 ulp times
    |k| summed over E <= 8 dims). Gradients pass the same softmax weights and 4-5 truncated products.
  ATOL_LARGE = 2e-4 for the +-50 logit case: the scores are products of q, k with |q|, |k| ~ 6, so their
    rounding error (0.5 ulp x |k| x E ~ 3e-5) enters the softmax, whose sensitivity is <= 1/2 per score.
  ATOL_MODULE = 2e-4 for whole modules (MultiheadAttention, the encoder): outputs pass 3-4 products after the
    softmax; weight gradients sum over B L = 15-24 positions (2 ulp each plus the softmax error times |x| ~ 3).
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.test_ops_users import ltz_bytes
from tests.test_tensor import _share, check

ATOL_ATTN = 5e-5
ATOL_LARGE = 2e-4
ATOL_MODULE = 2e-4


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _randn(*shape, seed=0, scale=1.0):
    return torch.randn(*shape, generator=_gen(seed)) * scale


# ---- scaled_dot_product_attention: values and gradients -----------------------------------------------------------
def test_scaled_dot_product_attention_values_and_gradients(parties):
    q, k, v = _randn(2, 2, 4, 8, seed=0), _randn(2, 2, 6, 8, seed=1), _randn(2, 2, 6, 5, seed=2)
    keep = torch.rand(4, 6, generator=_gen(3)) > 0.4
    keep[2] = False                      # a fully masked row: zeros, as torch
    keep[0, 0] = True
    additive = torch.randn(2, 1, 4, 6, generator=_gen(4))
    additive[0, 0, 1, 2:] = float("-inf")
    cases = [
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v),
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=keep),
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=additive),
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, scale=0.3),
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=keep, scale=0.25),  # 2^-2: deferred
    ]
    for fn in cases:
        check(parties, fn, [q, k, v], atol=ATOL_ATTN)
    # grouped-query attention: 2 key/value heads serve 4 query heads
    q4 = _randn(1, 4, 3, 8, seed=5)
    check(parties, lambda q, k, v: F.scaled_dot_product_attention(q, k, v, enable_gqa=True),
          [q4, k[:1], v[:1]], atol=ATOL_ATTN)


def test_attention_softmax_large_logits_and_masked_rows(parties):
    """Logits up to +-50 (trained transformers produce them): max subtraction keeps the softmax exact to its bound;
    v = identity makes the output the attention weights themselves."""
    torch.manual_seed(0)
    q = _randn(1, 6, 8, seed=6, scale=5.0)
    k = _randn(1, 6, 8, seed=7, scale=5.0)
    eye = torch.eye(6).unsqueeze(0)
    keep = torch.ones(6, 6, dtype=torch.bool)
    keep[3] = False
    keep[4, :5] = False                  # one key left: weight exactly 1
    scores = (q.double() @ k.double().transpose(-2, -1)) / 8 ** 0.5
    assert scores.abs().max() > 50 and scores[0].max(-1).values.sub(scores[0].min(-1).values).max() > 50
    res = check(parties, lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=keep), [q, k, eye],
                atol=ATOL_LARGE)
    w = res[0][0]
    assert torch.equal(w[0, 3], torch.zeros(6))                   # fully masked row: exact zeros
    assert torch.equal(w[0, 4, :5], torch.zeros(5)) and abs(float(w[0, 4, 5]) - 1.0) < 1e-5


# ---- dropout inside attention: a public mask from the common PRG --------------------------------------------------
def _sdpa_dropout(party, q, k, v):
    from secure_lightning.tensor import reveal_tensor
    qs, ks, vs = (_share(party, t, True) for t in (q, k, v))
    y = F.scaled_dot_product_attention(qs, ks, vs, dropout_p=0.25)
    gy = _share(party, torch.ones(y.shape) * 0.5, owner=1)
    y.backward(gy)
    y2 = F.scaled_dot_product_attention(qs, ks, vs, dropout_p=0.25)
    return reveal_tensor(y.detach()), [reveal_tensor(t.grad) for t in (qs, ks, vs)], reveal_tensor(y2.detach())


def test_attention_dropout_mask_is_public_fresh_and_in_the_gradient(parties):
    q, k = _randn(2, 8, 4, seed=8), _randn(2, 8, 4, seed=9)
    v = torch.eye(8).expand(2, 8, 8).contiguous()      # output = dropped weights / (1 - p)
    res = parties.run(_sdpa_dropout, q, k, v)
    y, grads, y2 = res[0]
    for r in res[1:]:
        assert torch.equal(r[0], y)
    drop = (y != 0).double()
    assert 0.6 < drop.mean() < 0.9 and not torch.equal(drop, (y2 != 0).double())  # p = 0.25; a fresh mask each call
    qd, kd, vd = (t.double().requires_grad_() for t in (q, k, v))
    w = torch.softmax(qd @ kd.transpose(-2, -1) / 2.0, dim=-1)
    ref = (w * drop / 0.75) @ vd
    ref.backward(torch.full(ref.shape, 0.5, dtype=torch.float64))
    assert (y.double() - ref).abs().max() < ATOL_ATTN
    for g, t in zip(grads, (qd, kd, vd)):
        assert (g.double() - t.grad).abs().max() < ATOL_ATTN


# ---- exact costs --------------------------------------------------------------------------------------------------
def _sdpa_costs(party, q, k, v, keep, g):
    from secure_lightning.protocols import approx
    qs, ks, vs = (_share(party, t, True) for t in (q, k, v))
    scores = _share(party, torch.randn(q.shape[:-1] + (k.shape[-2],), generator=_gen(1)))
    with party.comm.cost() as sm:
        approx.softmax(scores.shares, -1, party=party)
    with party.comm.cost() as fwd:
        y = F.scaled_dot_product_attention(qs, ks, vs)
    with party.comm.cost() as fwd_masked:
        F.scaled_dot_product_attention(qs, ks, vs, attn_mask=keep)
    gs = _share(party, g, owner=1)
    with party.comm.cost() as bwd:
        y.backward(gs)
    return [(c.total.rounds, c.total.bytes) for c in (sm, fwd, fwd_masked, bwd)], len(party.audit)


def test_scaled_dot_product_attention_costs_exact(parties):
    B, H, L, S, E, Ev = 2, 2, 4, 6, 8, 5            # scale 1/sqrt(8): one truncation of q
    q, k, v = _randn(B, H, L, E, seed=10), _randn(B, H, S, E, seed=11), _randn(B, H, S, Ev, seed=12)
    keep = torch.rand(L, S, generator=_gen(13)) > 0.5
    g = _randn(B, H, L, Ev, seed=14)
    N, R = B * H * L * S, B * H * L
    for (sm, fwd, fwd_masked, bwd), opened in parties.run(_sdpa_costs, q, k, v, keep, g):
        assert opened == 0
        # q * scale, q k^T, softmax, weights @ v: three truncations around approx.softmax
        assert fwd == (9 + sm[0], 16 * (R * E + N + R * Ev) + sm[1])
        assert fwd_masked == fwd                      # a public mask costs nothing
        # d(weights @ v): 2 products; softmax: row sums + one product; d(q k^T): 2 products; d(q * scale)
        assert bwd == (21, 16 * (N + B * H * S * Ev) + 16 * (R + N) + 16 * (R * E + B * H * S * E) + 16 * R * E)


# ---- nn.MultiheadAttention ----------------------------------------------------------------------------------------
def _mha_cases(party, sd, cfg, cases):
    from secure_lightning.nn import secure_module
    from secure_lightning.tensor import reveal_tensor
    m = nn.MultiheadAttention(**cfg)
    m.load_state_dict(sd)
    secure_module(m, party)
    out = []
    for x, kv, kw, train, no_grad in cases:
        m.train(train)
        for p in m.parameters():
            p.grad = None
        xs = _share(party, x, True)
        kvs = xs if kv is None else _share(party, kv, True)
        with torch.set_grad_enabled(not no_grad):
            y, w = m(xs, kvs, kvs, **kw)
        grads = None
        if not no_grad:
            y.backward(_share(party, torch.ones(y.shape) * 0.5, owner=1))
            grads = [reveal_tensor(xs.grad)] + [reveal_tensor(p.grad) for p in m.parameters()]
        out.append((reveal_tensor(y.detach()), None if w is None else reveal_tensor(w.detach()), grads))
    return out


def _mha_reference(sd, cfg, cases):
    m = nn.MultiheadAttention(**cfg).double()
    m.load_state_dict(sd)
    out = []
    for x, kv, kw, train, no_grad in cases:
        m.train(train)
        m.zero_grad()
        xd = x.double().requires_grad_()
        kvd = xd if kv is None else kv.double().requires_grad_()
        kw = {k: (t.double() if isinstance(t, torch.Tensor) and t.is_floating_point() else t) for k, t in kw.items()}
        with torch.set_grad_enabled(not no_grad):
            y, w = m(xd, kvd, kvd, **kw)
        grads = None
        if not no_grad:
            y.backward(torch.full(y.shape, 0.5, dtype=torch.float64))
            grads = [xd.grad] + [p.grad for p in m.parameters()]
        out.append((y.detach(), None if w is None else w.detach(), grads))
    return out


def _compare(got, ref, atol):
    for (y, w, grads), (yr, wr, gr) in zip(got, ref):
        assert (y.double() - yr).abs().max() < atol
        assert (w is None) == (wr is None)
        if w is not None:
            assert (w.double() - wr).abs().max() < atol
        if gr is not None:
            for g, r in zip(grads, gr):
                assert (g.double() - r).abs().max() < atol, (g - r).abs().max()


def _mha_run(parties, cfg, cases, seed=0):
    torch.manual_seed(seed)
    sd = nn.MultiheadAttention(**cfg).state_dict()
    got = parties.run(_mha_cases, sd, cfg, cases)[0]
    _compare(got, _mha_reference(sd, cfg, cases), ATOL_MODULE)


def test_multihead_attention_batch_first_masks_weights_train_and_eval(parties):
    B, L, E = 3, 5, 16
    pad = torch.zeros(B, L, dtype=torch.bool)
    pad[1, 3:] = True                                  # key padding of the second sequence
    causal = nn.Transformer.generate_square_subsequent_mask(L)   # float, -inf above the diagonal
    causal_bool = torch.ones(L, L, dtype=torch.bool).triu(1)
    x = _randn(B, L, E, seed=20)
    cases = [
        (x, None, dict(need_weights=True), True, False),
        (x, None, dict(need_weights=False, key_padding_mask=pad), True, False),
        (x, None, dict(need_weights=True, key_padding_mask=pad, attn_mask=causal_bool), False, False),
        (x, None, dict(need_weights=False, attn_mask=causal, is_causal=True), False, False),
        (x, None, dict(need_weights=True, average_attn_weights=False, attn_mask=causal), True, False),
        (x, None, dict(need_weights=True, key_padding_mask=pad), False, True),    # eval, no grad: fast-path state
    ]
    _mha_run(parties, dict(embed_dim=E, num_heads=2, batch_first=True), cases)


def test_multihead_attention_sequence_first_cross_attention_and_options(parties):
    L, S, B, E = 4, 6, 2, 16
    x, mem = _randn(L, B, E, seed=21), _randn(S, B, E, seed=22)
    pad = torch.zeros(B, S, dtype=torch.bool)
    pad[0, 4:] = True
    cases = [(x, mem, dict(key_padding_mask=pad), True, False), (x, mem, dict(need_weights=False), False, False),
             (x[:, 0], mem[:, 0], dict(), True, False)]        # unbatched
    _mha_run(parties, dict(embed_dim=E, num_heads=4), cases, seed=1)
    # separate projections (kdim, vdim), bias_k / bias_v, zero attention
    cfg = dict(embed_dim=E, num_heads=2, kdim=8, vdim=8, add_bias_kv=True, add_zero_attn=True)
    _mha_run(parties, cfg, [(x, _randn(S, B, 8, seed=23), dict(key_padding_mask=pad), True, False)], seed=2)


def _mha_dropout(party, sd, x):
    from secure_lightning.nn import secure_module
    from secure_lightning.tensor import reveal_tensor
    m = nn.MultiheadAttention(16, 2, dropout=0.5, batch_first=True)
    m.load_state_dict(sd)
    secure_module(m, party)
    xs = _share(party, x)
    _, w_train = m(xs, xs, xs, average_attn_weights=False)
    m.eval()
    _, w_eval = m(xs, xs, xs, average_attn_weights=False)
    return reveal_tensor(w_train), reveal_tensor(w_eval)


def test_multihead_attention_dropout_in_train_mode_only(parties):
    torch.manual_seed(3)
    sd = nn.MultiheadAttention(16, 2, dropout=0.5, batch_first=True).state_dict()
    x = _randn(2, 6, 16, seed=24)
    w_train, w_eval = parties.run(_mha_dropout, sd, x)[0]
    m = nn.MultiheadAttention(16, 2, dropout=0.5, batch_first=True).double()
    m.load_state_dict(sd)
    m.eval()
    ref = m(x.double(), x.double(), x.double(), average_attn_weights=False)[1]
    assert (w_eval.double() - ref).abs().max() < ATOL_ATTN
    kept = w_train != 0
    assert 0.35 < kept.double().mean() < 0.65
    assert (w_train.double()[kept] - 2 * ref[kept]).abs().max() < 2 * ATOL_ATTN   # torch's 1/(1-p) on the weights


def _native_mha(party, sd, x, pad):
    from secure_lightning.nn import secure_module
    from secure_lightning.tensor import reveal_tensor
    m = nn.MultiheadAttention(16, 2, batch_first=True)
    m.load_state_dict(sd)
    secure_module(m, party)
    xs = _share(party, x)
    y, w = torch._native_multi_head_attention(xs, xs, xs, 16, 2, m.in_proj_weight, m.in_proj_bias,
                                               m.out_proj.weight, m.out_proj.bias, pad, True, True, 1)
    return reveal_tensor(y), reveal_tensor(w)


def test_fused_multihead_attention_kernel_is_routed(parties):
    """The modules skip torch._native_multi_head_attention for SharedTensor arguments (has_torch_function); a direct
    call is routed to the composed attention and matches torch's kernel on plain tensors."""
    torch.manual_seed(4)
    m = nn.MultiheadAttention(16, 2, batch_first=True)
    x = _randn(2, 5, 16, seed=25)
    pad = torch.zeros(2, 5, dtype=torch.bool)
    pad[0, 3:] = True
    y, w = parties.run(_native_mha, m.state_dict(), x, pad)[0]
    with torch.no_grad():
        yr, wr = torch._native_multi_head_attention(x, x, x, 16, 2, m.in_proj_weight, m.in_proj_bias,
                                                    m.out_proj.weight, m.out_proj.bias, pad, True, True, 1)
    assert (y - yr).abs().max() < ATOL_MODULE and (w - wr).abs().max() < ATOL_MODULE


# ---- embeddings ---------------------------------------------------------------------------------------------------
def _embedding(party, W, ids):
    from secure_lightning.tensor import reveal_tensor, share_tensor
    ws = _share(party, W, True)
    out = {}
    for kind in ("public", "owner", "secret"):
        ws.grad = None
        if kind == "public":
            i = ids
        else:
            i = share_tensor(ids if party.rank == 0 else None, 0, party)
            if kind == "secret":
                i = i + 0                        # a computed tensor: its owner no longer holds it
        g = _share(party, torch.ones(*ids.shape, W.shape[1]) * 0.5, owner=1)
        with party.comm.cost() as fwd:
            y = nn.functional.embedding(i, ws, padding_idx=1)
        with party.comm.cost() as bwd:
            y.backward(g)
        out[kind] = (y.detach(), ws.grad, (fwd.total.rounds, fwd.total.bytes), (bwd.total.rounds, bwd.total.bytes))
    opened = len(party.audit)
    return {k: (reveal_tensor(y), reveal_tensor(g), *c) for k, (y, g, *c) in out.items()}, opened


def test_embedding_public_owner_and_secret_ids_values_gradients_costs(parties):
    V, D = 7, 4
    W = _randn(V, D, seed=30)
    ids = torch.tensor([[0, 1, 6], [3, 3, 2]])
    n = ids.numel()
    Wd = W.double().requires_grad_()
    ref = F.embedding(ids, Wd, padding_idx=1)
    ref.backward(torch.full(ref.shape, 0.5, dtype=torch.float64))
    for rank, (out, opened) in enumerate(parties.run(_embedding, W, ids)):
        assert opened == 0
        for kind, (y, g, fwd, bwd) in out.items():
            # exact selection: only the table's encoding (0.5 ulp) and the gradient's (0.5 ulp times repeats)
            assert (y.double() - ref).abs().max() <= 2 ** -21, kind
            assert (g.double() - Wd.grad).abs().max() <= 2 ** -20, kind
        assert out["public"][2:] == ((0, 0), (0, 0))
        # owner: header + one-hot rows (owner only), then the product's reshare; backward one_hot^T @ g
        assert out["owner"][2] == (3, (2 * 80 + 16 * n * V if rank == 0 else 0) + 8 * n * D)
        assert out["owner"][3] == (1, 8 * V * D)
        assert out["secret"][2] == (9, ltz_bytes(2 * n * V) + 8 * n * D)   # eq on n V elements, then the product
        assert out["secret"][3] == (1, 8 * V * D)


def _embedding_errors(party, W):
    from secure_lightning.tensor import UnsupportedOpError, share_tensor
    ws = _share(party, W)
    msgs = []
    ids = share_tensor(torch.tensor([1, 9]) if party.rank == 0 else None, 0, party)
    for call in (lambda: F.embedding(ids, ws), lambda: F.embedding(torch.tensor([0, 7]), ws),
                 lambda: F.embedding(torch.tensor([0]), ws, max_norm=1.0)):
        try:
            call()
            msgs.append("no error")
        except (ValueError, IndexError, UnsupportedOpError) as e:
            msgs.append(f"{type(e).__name__}: {e}")
    return msgs


def test_embedding_bad_ids_raise_on_every_party(parties):
    for msgs in parties.run(_embedding_errors, _randn(7, 4, seed=31)):
        assert msgs[0].startswith("ValueError") and "embedding_ids" in msgs[0]   # the owner's ids: out of range
        assert msgs[1].startswith("IndexError")
        assert msgs[2].startswith("UnsupportedOpError") and "max_norm" in msgs[2]


# ---- a small ViT-style model: token embedding, class token, positional parameter, attention, mean pooling ---------
class TokenModel(nn.Module):
    def __init__(self, vocab=11, d=16, length=5):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(length + 1, d)              # on a public arange
        self.extra_pos = nn.Parameter(torch.randn(1, length + 1, d) * 0.1)
        self.cls = nn.Parameter(torch.randn(1, 1, d) * 0.5)
        self.attn = nn.MultiheadAttention(d, 2, batch_first=True)
        self.drop = nn.Dropout(0.0)
        self.head = nn.Linear(d, 3)

    def forward(self, ids):
        x = self.tok(ids)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.pos(torch.arange(x.shape[1])) + self.extra_pos
        x = x + self.drop(self.attn(x, x, x, need_weights=False)[0])
        return self.head(x.mean(dim=1)), x[:, 0]


def _token_model(party, sd, ids):
    from secure_lightning.nn import secure_module
    from secure_lightning.tensor import reveal_tensor, share_tensor
    m = TokenModel()
    m.load_state_dict(sd)
    secure_module(m, party)
    idss = share_tensor(ids if party.rank == 0 else None, 0, party)
    y, c = m(idss)
    loss = F.cross_entropy(y, torch.tensor([0, 2]))
    loss.backward()
    return reveal_tensor(y.detach()), reveal_tensor(c.detach()), {n: reveal_tensor(p.grad) for n, p in
                                                                   m.named_parameters()}


def test_token_model_class_token_positions_mean_pool_forward_backward(parties):
    torch.manual_seed(5)
    sd = TokenModel().state_dict()
    ids = torch.tensor([[1, 4, 4, 10, 0], [7, 2, 3, 3, 9]])
    y, c, grads = parties.run(_token_model, sd, ids)[0]
    m = TokenModel().double()
    m.load_state_dict(sd)
    yr, cr = m(ids)
    F.cross_entropy(yr, torch.tensor([0, 2])).backward()
    assert (y.double() - yr).abs().max() < ATOL_MODULE and (c.double() - cr).abs().max() < ATOL_MODULE
    for name, p in m.named_parameters():
        assert (grads[name].double() - p.grad).abs().max() < ATOL_MODULE, name


# ---- nn.TransformerEncoder ----------------------------------------------------------------------------------------
def _make_encoder():
    return nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True), 2,
                                 enable_nested_tensor=False)


def _encoder(party, sd, x, pad):
    from secure_lightning.nn import secure_module
    from secure_lightning.tensor import reveal_tensor
    enc = _make_encoder()
    enc.load_state_dict(sd)
    secure_module(enc, party)
    out = []
    for train in (True, False):
        enc.train(train)
        for p in enc.parameters():
            p.grad = None
        xs = _share(party, x, True)
        y = enc(xs, src_key_padding_mask=pad)
        y.backward(_share(party, torch.ones(y.shape) * 0.5, owner=1))
        out.append((reveal_tensor(y.detach()), [reveal_tensor(xs.grad)] + [reveal_tensor(p.grad)
                                                                          for p in enc.parameters()]))
    enc.eval()
    with torch.no_grad():  # the state in which plain tensors take torch's fused encoder kernel
        out.append((reveal_tensor(enc(_share(party, x), src_key_padding_mask=pad)), None))
    return out


def _encoder_run(parties):
    torch.manual_seed(6)
    enc = _make_encoder()
    sd = enc.state_dict()
    x = _randn(2, 5, 16, seed=40)
    pad = torch.zeros(2, 5, dtype=torch.bool)
    pad[1, 4] = True
    got = parties.run(_encoder, sd, x, pad)[0]
    ref = enc.double()
    for (y, grads), train in zip(got, (True, False, False)):
        ref.train(train)
        ref.zero_grad()
        xd = x.double().requires_grad_()
        yr = ref(xd, src_key_padding_mask=pad)
        assert (y.double() - yr.detach()).abs().max() < ATOL_MODULE
        if grads is not None:
            yr.backward(torch.full(yr.shape, 0.5, dtype=torch.float64))
            for g, r in zip(grads, [xd.grad] + [p.grad for p in ref.parameters()]):
                assert (g.double() - r).abs().max() < ATOL_MODULE


def test_transformer_encoder_forward_backward_train_and_eval(parties):
    """A user's nn.TransformerEncoder (LayerNorm, attention with a padding mask, ReLU feed-forward, residuals) in
    train and eval mode, and eval under no_grad, where plain tensors take torch._transformer_encoder_layer_fwd."""
    _encoder_run(parties)


def _fused_layer_args(layer):
    sa = layer.self_attn
    return (16, 2, sa.in_proj_weight, sa.in_proj_bias, sa.out_proj.weight, sa.out_proj.bias, False, False,
            layer.norm1.eps, layer.norm1.weight, layer.norm1.bias, layer.norm2.weight, layer.norm2.bias,
            layer.linear1.weight, layer.linear1.bias, layer.linear2.weight, layer.linear2.bias)


def _fused_encoder_layer(party, sd, x, pad):
    from secure_lightning.nn import secure_module
    from secure_lightning.tensor import reveal_tensor
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    layer.load_state_dict(sd)
    secure_module(layer, party)
    y = torch._transformer_encoder_layer_fwd(_share(party, x), *_fused_layer_args(layer), pad, 1)
    return reveal_tensor(y)


def test_fused_encoder_layer_kernel_is_routed(parties):
    torch.manual_seed(7)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True).eval()
    x = _randn(2, 5, 16, seed=41)
    pad = torch.zeros(2, 5, dtype=torch.bool)
    pad[0, 3:] = True
    y = parties.run(_fused_encoder_layer, layer.state_dict(), x, pad)[0]
    with torch.no_grad():
        ref = torch._transformer_encoder_layer_fwd(x, *_fused_layer_args(layer), pad, 1)
    assert (y - ref).abs().max() < ATOL_MODULE


# ---- layer table --------------------------------------------------------------------------------------------------
def test_attention_and_embedding_layers_pass_the_layer_check():
    from secure_lightning.nn import SecureLayers, UnsupportedLayerError
    SecureLayers().check(nn.Sequential(nn.Embedding(5, 4), nn.MultiheadAttention(4, 2)))
    with pytest.raises(UnsupportedLayerError, match="TransformerEncoderLayer"):
        SecureLayers().check(nn.TransformerDecoderLayer(8, 2))
