"""Shape rules of the kernel contract, shared by every backend so they refuse bad input alike."""


def conv2d_output_hw(x_shape, w_shape):
    """(Ho, Wo) of a valid stride-1 convolution of x (N,C,H,W) by w (K,C,kh,kw); ValueError if impossible."""
    c, h, wd = x_shape[1:]
    k, c2, kh, kw = w_shape
    if c != c2:
        raise ValueError(f"conv2d: input has {c} channels but the weights expect {c2}")
    ho, wo = h - kh + 1, wd - kw + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"conv2d: input {h}x{wd} is smaller than the {kh}x{kw} kernel")
    return ho, wo


def conv_transpose2d_output_hw(x_shape, w_shape):
    """(2(H-1)+kh, 2(W-1)+kw) of a stride-2 transposed convolution of x (N,C,H,W) by w (C,K,kh,kw)."""
    c, h, wd = x_shape[1:]
    c2, _, kh, kw = w_shape
    if c != c2:
        raise ValueError(f"conv_transpose2d: input has {c} channels but the weights expect {c2}")
    return 2 * (h - 1) + kh, 2 * (wd - 1) + kw


def crop_margins(skip_hw, up_hw):
    """Top and left margins that center-crop a skip map of size skip_hw to up_hw."""
    (hs, ws), (hu, wu) = skip_hw, up_hw
    dh, dw = hs - hu, ws - wu
    if dh < 0 or dw < 0:
        raise ValueError(f"crop_concat: skip map {hs}x{ws} is smaller than the up-sampled map {hu}x{wu}")
    if dh % 2 or dw % 2:
        raise ValueError(
            f"crop_concat: cannot center-crop {hs}x{ws} to {hu}x{wu}: the margins ({dh}, {dw}) are odd; "
            "choose a tile size from minunet.model.geometry so every level has even margins")
    return dh // 2, dw // 2
