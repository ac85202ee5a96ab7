"""Winograd F(r x r, 3x3) for the compute-once stage of a fused 3x3 stride-1 Lego layer.

Every split is convolved with the same bank, so the bank's transform ``U = G g G^T`` is a
constant computed once at compile time (``transform_bank``), and each split's input tiles
are transformed once and shared by all ``m`` filters:

    V[n, i, e, u, c, ty, tx] = (B^T d B)[e, u]   d: the (r+2)^2 input tile of split i, channel c
    M[n, i, e, u, k, ty, tx] = sum_c U[e, u, k, c] V[n, i, e, u, c, ty, tx]   (per e, u: a GEMM)
    L[n, i, k, h, w]         = (A^T M A)[h % r, w % r]    at tile (h // r, w // r)

The Lego maps ``L`` cover whole tiles (``tiles * r`` rows and columns, at least the output's);
the gather-sum reads only the output's part. F(2x2, 3x3) multiplies 2.25x less than the
direct conv, F(4x4, 3x3) 4x less, at the cost of the transforms and some rounding error
(Lavin & Gray 2016; the interpolation points are TVM's, chosen for accuracy by Barabasz et
al. 2018).
"""
from __future__ import annotations

import numpy as np
from tvm import te, tirx
from tvm.topi.nn.winograd_util import _cook_toom_convolution, _interpolation_points

TILES = (2, 4)                 # output tile sizes r of F(r x r, 3x3)
# Block names the Winograd schedule looks up.
PAD_TILES_BLOCK = "winograd_pad_tiles"
INPUT_ROWS_BLOCK, INPUT_BLOCK = "winograd_input_rows", "winograd_input"
GEMM_BLOCK = "winograd_gemm"
OUTPUT_ROWS_BLOCK, MAPS_BLOCK = "winograd_output_rows", "lego_feature"


def matrices(tile: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(A, B, G) of F(tile x tile, 3x3), float64: ``[alpha, tile]``, ``[alpha, alpha]``,
    ``[alpha, 3]`` with alpha = tile + 2, so that ``y = A^T [(G g G^T) * (B^T d B)] A``."""
    if tile not in TILES:
        raise ValueError(f"Winograd tile {tile}: choose one of {TILES}")
    return _cook_toom_convolution(_interpolation_points(tile + 1), tile, 3)


def transform_bank(bank: np.ndarray, tile: int, block: int) -> np.ndarray:
    """``[m, b, 3, 3]`` -> ``[alpha, alpha, m/block, b, block]``: ``G g G^T`` per filter and
    channel (in float64, then float32), ``block`` filters innermost for the GEMM's vectors."""
    _, _, g = matrices(tile)
    m, b = bank.shape[:2]
    u = np.einsum("ea,kcab,ub->eukc", g, bank.astype(np.float64), g)
    alpha = tile + 2
    return np.ascontiguousarray(u.reshape(alpha, alpha, m // block, block, b)
                                .transpose(0, 1, 2, 4, 3).astype(bank.dtype))


def tiles(extent: int, tile: int) -> int:
    return -(-extent // tile)


def _coefficient(matrix: np.ndarray, row, col: int):
    """``matrix[row, col]`` for a loop variable ``row`` (a Select chain; once the loop is
    unrolled the simplifier folds it to a constant and drops the terms that are zero)."""
    value = tirx.const(0.0, "float32")
    for r in range(matrix.shape[0]):
        if matrix[r, col] != 0:
            value = tirx.Select(row == r, tirx.const(float(matrix[r, col]), "float32"), value)
    return value


def extra_padding(spec, tile: int) -> tuple[int, int]:
    """Padding (bottom, right) beyond the layer's: whole tiles of output, plus one tile of
    columns, which ``deinterleave`` reads (its ``x`` reaches ``tiles + 1`` tiles)."""
    s = spec
    return (tiles(s.out_height, tile) * tile - s.out_height,
            tiles(s.out_width, tile) * tile - s.out_width + tile)


def deinterleave(padded, spec, batch, tile: int):
    """``D[n, c, y, p, x] = padded[n, c, y, x * tile + p]``: a tile's columns ``tx * tile + rb``
    are ``D[.., rb % tile, tx + rb // tile]``, contiguous along ``tx``, so the input
    transform runs on vectors of tiles."""
    s = spec
    rows = tiles(s.out_height, tile) * tile + 2
    cols = tiles(s.out_width, tile) + 1
    return te.compute((batch, s.in_channels, rows, tile, cols),
                      lambda n, c, y, p, x: padded[n, c, y, x * tile + p], name=PAD_TILES_BLOCK)


def lego_maps(padded, bank, spec, batch, tile: int):
    """The Lego maps ``[batch, o, m/V, th*r, tw*r, V]`` of a 3x3 stride-1 layer by Winograd.
    ``padded``: the input with the layer's padding and ``extra_padding``; ``bank``:
    ``transform_bank``'s constant.
    Both transforms are separable (rows, then columns); each stage is written as its sum of
    nonzero terms once the schedule unrolls the small loops."""
    s = spec
    a_mat, b_mat, _ = matrices(tile)
    alpha, vb, b = tile + 2, s.bank_block, s.split_channels
    th, tw = tiles(s.out_height, tile), tiles(s.out_width, tile)
    d = deinterleave(padded, s, batch, tile)

    def rows_transformed(n, i, c, ty, e, rb, tx):
        return _dot([d[n, i * b + c, ty * tile + ra, rb % tile, tx + rb // tile]
                     for ra in range(alpha)], b_mat.T, e)
    t1 = te.compute((batch, s.splits, b, th, alpha, alpha, tw), rows_transformed,
                    name=INPUT_ROWS_BLOCK)
    v = te.compute((batch, s.splits, alpha, alpha, b, th, tw),
                   lambda n, i, e, u, c, ty, tx: _dot(
                       [t1[n, i, c, ty, e, rb, tx] for rb in range(alpha)], b_mat.T, u),
                   name=INPUT_BLOCK)

    rc = te.reduce_axis((0, b), name="rc")
    gemm = te.compute((batch, s.splits, alpha, alpha, s.lego_filters // vb, th, tw, vb),
                      lambda n, i, e, u, ko, ty, tx, ki: te.sum(
                          v[n, i, e, u, rc, ty, tx] * bank[e, u, ko, rc, ki], axis=[rc]),
                      name=GEMM_BLOCK)

    o1 = te.compute((batch, s.splits, s.lego_filters // vb, th, tw, tile, alpha, vb),
                    lambda n, i, ko, ty, tx, hi, u, ki: _dot(
                        [gemm[n, i, e, u, ko, ty, tx, ki] for e in range(alpha)], a_mat.T, hi),
                    name=OUTPUT_ROWS_BLOCK)
    return te.compute((batch, s.splits, s.lego_filters // vb, th * tile, tw * tile, vb),
                      lambda n, i, ko, h, w, ki: _dot(
                          [o1[n, i, ko, h // tile, w // tile, h % tile, u, ki]
                           for u in range(alpha)], a_mat.T, w % tile),
                      name=MAPS_BLOCK)


def _dot(values: list, matrix: np.ndarray, row):
    """``sum_j matrix[row, j] * values[j]`` for a loop variable ``row``."""
    terms = [value * _coefficient(matrix, row, j) for j, value in enumerate(values)
             if matrix[:, j].any()]
    return sum(terms[1:], terms[0])


# The blocks besides the maps (``LEGO_BLOCK``'s name) that only the Lego schedule handles.
STAGES = (PAD_TILES_BLOCK, INPUT_ROWS_BLOCK, INPUT_BLOCK, GEMM_BLOCK, OUTPUT_ROWS_BLOCK)
