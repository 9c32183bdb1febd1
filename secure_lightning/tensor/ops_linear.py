"""Bilinear ops: matrix products and 2-D convolutions, forward and backward.

Cost (per party): every product of two fixed-point values is one local bilinear step (two int64 GEMMs/convs) and one
truncation: 3 rounds, 2 ring elements (16 bytes) per output element (arithmetic.matmul / conv2d). A secret x secret
matrix product's last round (its resharing, 8 bytes per element) waits for the result's first use; opening the
result right away skips it (shared.PendingReshare, sharing_io.reveal_tensor). A product with a
public operand costs the same (one truncation), except for public integer matrices (free).
Error: <= 1 ulp of truncation per output element on top of the inputs' rounding (0.5 ulp times the other operand,
summed over the inner dimension).

convolution_backward is computed with forward convolutions only (so it runs on the exact int64 GEMM/conv paths of
gemm.py on every device):
  grad_input  = conv2d(zero-dilated grad_out, weight with in/out channels swapped per group and flipped,
                       padding d(k-1)-p (cropping where negative), dilation d)
  grad_weight = conv2d(input^T, grad_out^T, stride=d, dilation=s, groups=G): batch and channels swapped, the
                input first padded by p and cropped to the extent the forward pass read.
"""
from __future__ import annotations

import torch

from ..protocols import arithmetic as A
from ..protocols.sharing import Shares
from .dispatch import (
    UnsupportedOpError, advise, aten, encode, implements, implements_function, is_integral, make_public, party_of,
    public_value, raw_of, shares_of, wrap,
)
from .functional import add, apply_local, mul, sum_
from .shared import SharedTensor, lazy_product


def matmul(a, b):
    """a @ b (torch.matmul semantics) for any mix of SharedTensor and public operands."""
    party = party_of(a, b)
    pa, pb = public_value(a, party.device), public_value(b, party.device)
    if pa is not None and pb is not None:
        return make_public(pa @ pb, party)
    if pb is not None:
        return _matmul_public(a, pb, left=False)
    if pa is not None:
        return _matmul_public(b, pa, left=True)
    (xa, ea), (xb, eb) = a.raw_shares, b.raw_shares  # deferred scales fold into the product's truncation
    # resharing deferred to the first use: an opening right after skips it (shared.PendingReshare)
    return lazy_product(A.matmul(xa, xb, party=party, extra_bits=ea + eb, replicate=False), party)


def _matmul_public(x, c, left):
    party = x.party
    if is_integral(c):
        return wrap(A.matmul_public(x.shares, c.to(torch.int64), left=left, fixed=False, party=party), party)
    return wrap(A.matmul_public(x.shares, encode(c, party), left=left, party=party), party)


@implements(aten.mm.default, aten.bmm.default, aten.matmul.default, aten.dot.default, aten.mv.default)
def mm(self, mat2):
    return matmul(self, mat2)


@implements(aten.addmm.default, aten.baddbmm.default, aten.addmv.default)
def addmm(self, mat1, mat2, beta=1, alpha=1):
    prod = matmul(mat1, mat2)
    if alpha != 1:
        prod = mul(prod, alpha)
    if beta == 0:
        return prod
    return add(prod, self if beta == 1 else mul(self, beta))


# ---- convolution ---------------------------------------------------------------------------------------------------
def _as_2d(x_shape, w_shape, stride, padding, dilation):
    """Promote a 1-D convolution to 2-D (height 1)."""
    if len(w_shape) == 3:
        return True, [1, *stride], [0, *padding], [1, *dilation]
    if len(w_shape) != 4:
        raise UnsupportedOpError(f"convolution with a {len(w_shape) - 2}-D kernel: only conv1d and conv2d are "
                                 "supported on shares")
    return False, list(stride), list(padding), list(dilation)


def _to4d(s: Shares, one_d: bool, unbatched: bool) -> Shares:
    if unbatched:
        s = s.map(lambda t: t.unsqueeze(0))
    if one_d:
        s = s.map(lambda t: t.unsqueeze(-2))
    return s


def _from4d(s: Shares, one_d: bool, unbatched: bool) -> Shares:
    if one_d:
        s = s.map(lambda t: t.squeeze(-2))
    if unbatched:
        s = s.map(lambda t: t.squeeze(0))
    return s


def _check(transposed, output_padding):
    if transposed:
        raise UnsupportedOpError("transposed convolution (ConvTranspose) is not supported on shares; use "
                                 "nn.Upsample(mode=\"nearest\") followed by a Conv2d, or a Conv2d on a zero-dilated "
                                 "input")


@implements(aten.convolution.default)
def convolution(input, weight, bias, stride, padding, dilation, transposed, output_padding, groups):
    _check(transposed, output_padding)
    party = party_of(input, weight, bias)
    one_d, stride, padding, dilation = _as_2d(input.shape, weight.shape, stride, padding, dilation)
    unbatched = input.dim() == weight.dim() - 1
    (xs, ex), (ws, ew) = raw_of(input, party), raw_of(weight, party)
    x, w = _to4d(xs, one_d, unbatched), _to4d(ws, one_d, False)
    y = A.conv2d(x, w, stride, padding, dilation, groups, party=party, extra_bits=ex + ew)
    out = wrap(_from4d(y, one_d, unbatched), party)
    if bias is not None:
        shape = [-1] + [1] * (out.dim() - 2 if not unbatched else out.dim() - 1)
        out = add(out, apply_local(lambda t: t.reshape(shape), (bias,), {}) if isinstance(bias, SharedTensor)
                  else public_value(bias).reshape(shape))
    return out


def conv2d_input_grad(g: Shares, w: Shares, in_hw, stride, padding, dilation, groups, *, party,
                      extra_bits: int = 0) -> Shares:
    """grad_input of y = conv2d(x, w): a forward conv of the zero-dilated gradient with the flipped, per-group
    transposed kernel. g: (N, Cout, Ho, Wo), w: (Cout, Cin/G, kh, kw) -> (N, Cin, H, W). Cost: as conv2d."""
    (H, W), (sh, sw), (ph, pw), (dh, dw) = in_hw, stride, padding, dilation
    cout, cig, kh, kw = w.shape
    n, _, ho, wo = g.shape
    G = groups

    def dilate(t):
        if sh == 1 and sw == 1:
            return t
        out = t.new_zeros(n, cout, (ho - 1) * sh + 1, (wo - 1) * sw + 1)
        out[:, :, ::sh, ::sw] = t
        return out

    top, left = dh * (kh - 1) - ph, dw * (kw - 1) - pw
    bottom = H - (ho - 1) * sh - 1 + ph
    right = W - (wo - 1) * sw - 1 + pw
    wt = w.map(lambda t: t.reshape(G, cout // G, cig, kh, kw).transpose(1, 2)
               .reshape(G * cig, cout // G, kh, kw).flip(-1, -2))
    # the padding is passed on, not applied: the conv skips the taps and outputs that see only padding
    return A.conv2d(g.map(dilate), wt, 1, (left, right, top, bottom), (dh, dw), G, party=party,
                    extra_bits=extra_bits)


def conv2d_weight_grad(x: Shares, g: Shares, w_shape, stride, padding, dilation, groups, *, party,
                       extra_bits: int = 0) -> Shares:
    """grad_weight of y = conv2d(x, w): conv2d(x^T, g^T) with stride and dilation exchanged. Cost: as conv2d on a
    (Cout, Cin/G, kh, kw) output: 3 rounds, 16 bytes per weight element."""
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    cout, cig, kh, kw = w_shape
    n, cin, H, W = x.shape
    _, _, ho, wo = g.shape
    G = groups
    hn, wn = (ho - 1) * sh + dh * (kh - 1) + 1, (wo - 1) * sw + dw * (kw - 1) + 1
    pads = (pw, wn - W - pw, ph, hn - H - ph)  # the forward's padding, cropped to the rows and columns it reads

    def prep_x(t):
        return t.reshape(n, G, cig, H, W).permute(2, 1, 0, 3, 4).reshape(cig, G * n, H, W)

    def prep_g(t):
        return t.reshape(n, G, cout // G, ho, wo).permute(1, 2, 0, 3, 4).reshape(cout, n, ho, wo)

    gw = A.conv2d(x.map(prep_x), g.map(prep_g), (dh, dw), pads, (sh, sw), G, party=party, extra_bits=extra_bits)
    return gw.map(lambda t: t.transpose(0, 1).contiguous())


@implements(aten.convolution_backward.default)
def convolution_backward(grad_output, input, weight, bias_sizes, stride, padding, dilation, transposed,
                         output_padding, groups, output_mask):
    _check(transposed, output_padding)
    party = party_of(grad_output, input, weight)
    one_d, stride, padding, dilation = _as_2d(input.shape, weight.shape, stride, padding, dilation)
    unbatched = input.dim() == weight.dim() - 1
    gi = gw = gb = None
    if output_mask[2]:  # first: a bias gradient settles a deferred scale of grad_output (it is a plain sum)
        dims = [0] + list(range(2, grad_output.dim())) if not unbatched else list(range(1, grad_output.dim()))
        gb = sum_(grad_output if isinstance(grad_output, SharedTensor)
                  else wrap(shares_of(grad_output, party), party), dims)
    gs, eg = raw_of(grad_output, party)
    g = _to4d(gs, one_d, unbatched)
    if output_mask[0]:
        ws, ew = raw_of(weight, party)
        w = _to4d(ws, one_d, False)
        x_hw = (1, input.shape[-1]) if one_d else tuple(input.shape[-2:])
        gi = wrap(_from4d(conv2d_input_grad(g, w, x_hw, stride, padding, dilation, groups, party=party,
                                            extra_bits=eg + ew), one_d, unbatched), party)
    if output_mask[1]:
        xs, ex = raw_of(input, party)
        x = _to4d(xs, one_d, unbatched)
        w_shape = (weight.shape[0], weight.shape[1], 1, weight.shape[2]) if one_d else tuple(weight.shape)
        gw_s = conv2d_weight_grad(x, g, w_shape, stride, padding, dilation, groups, party=party,
                                  extra_bits=ex + eg)
        gw = wrap(gw_s.map(lambda t: t.squeeze(-2)) if one_d else gw_s, party)
    return gi, gw, gb


@implements_function(torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__)
def _matmul_function(input, other, *, out=None):
    """torch.matmul with a 1-D left operand uses an in-place squeeze_ on its result, which a wrapper tensor cannot
    do; rewrite that case with out-of-place ops. Everything else goes to aten (mm, bmm, mv, dot)."""
    if out is not None:
        raise UnsupportedOpError("matmul(out=...) on shares: use the returned value")
    if input.dim() == 1 and other.dim() >= 2:
        return torch.matmul(input.unsqueeze(0), other).squeeze(-2)
    with torch._C.DisableTorchFunctionSubclass():
        return torch.matmul(input, other)


@implements_function(torch.Tensor.__rmatmul__)
def _rmatmul_function(self, other):
    return _matmul_function(other, self)


advise([aten.squeeze_, aten.unsqueeze_, aten.transpose_, aten.t_, aten.as_strided_, aten.resize_,
        aten.swapdims_, aten.swapaxes_],
       "in-place shape changes cannot be applied to a SharedTensor; use the out-of-place op (x = x.squeeze(0))")
