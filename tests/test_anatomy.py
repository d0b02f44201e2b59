"""The synthetic anatomy: nilearn's MNI template on t1-linear's grid, subjects, and the planted atrophy where the
hippocampi and ventricles are."""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from maps_interpret import anatomy
from maps_interpret.anatomy import T1_LINEAR_ORIGIN, T1_LINEAR_SHAPE, grid_affine, on_grid, planted_mask, subject

SMALL = (43, 52, 45)  # about 4 mm voxels


def voxel(affine: np.ndarray, mm) -> tuple:
    return tuple(np.round(np.linalg.solve(affine, [*mm, 1.0])[:3]).astype(int))


def test_grids_cover_t1_linears_field_of_view():
    full = grid_affine(T1_LINEAR_SHAPE)
    assert np.allclose(np.diag(full)[:3], 1) and np.allclose(full[:3, 3], T1_LINEAR_ORIGIN)
    for shape in [(85, 104, 90), SMALL, (12, 14, 10)]:
        affine = grid_affine(shape)
        for corner in (np.full(3, -0.5), np.array(shape) - 0.5):  # the outer faces of the first and last voxels
            fullcorner = np.where(corner < 0, -0.5, np.array(T1_LINEAR_SHAPE) - 0.5)
            assert np.allclose((affine @ [*corner, 1])[:3], (full @ [*fullcorner, 1])[:3])


def test_the_template_is_a_brain_in_mni_space():
    grid = on_grid(SMALL)
    t1 = grid.t1.numpy()
    assert t1[voxel(grid.affine, (0, -18, 18))] > 0.3  # deep white matter near the centre of the brain
    assert t1[0, 0, 0] < 0.05 and t1[-1, -1, -1] < 0.05  # the corners of the field of view: no brain
    assert 0.2 < (t1 > 0.1).mean() < 0.8


def test_the_planted_atrophy_lies_in_both_hippocampi_and_around_the_ventricles():
    mask = planted_mask(SMALL)
    affine = grid_affine(SMALL)
    assert mask.dtype == np.uint8 and 0 < mask.mean() < 0.03
    for centre in anatomy.HIPPOCAMPI:  # a voxel of the mask within 4 mm of each hippocampus' centre
        i, j, k = voxel(affine, centre)
        assert mask[i - 1:i + 2, j - 1:j + 2, k - 1:k + 2].any(), centre
    x = (affine @ np.vstack([np.indices(SMALL).reshape(3, -1), np.ones(mask.size)]))[0].reshape(SMALL)
    assert mask[x < 0].sum() > 0 and mask[x > 0].sum() > 0  # both hemispheres
    (x0, x1), (y0, y1), (z0, z1) = anatomy.VENTRICLE_BOX
    i0, j0, k0 = voxel(affine, (x0, y0, max(z0, 0)))
    i1, j1, k1 = voxel(affine, (x1, y1, z1))
    assert mask[i0:i1, j0:j1, k0:k1].sum() > 0.3 * mask.sum()  # most of the rest: around the lateral ventricles


def test_ad_and_cn_differ_only_where_the_atrophy_is_planted():
    """Same draws (deformation, bias, scale, noise) for both: the difference is the atrophy, inside the mask up to
    the deformation's few millimetres."""
    ad = subject(SMALL, "AD", torch.Generator().manual_seed(3))[0].numpy()
    cn = subject(SMALL, "CN", torch.Generator().manual_seed(3))[0].numpy()
    difference = np.abs(ad - cn)
    near = ndimage.binary_dilation(planted_mask(SMALL, threshold=0.05), iterations=2)
    assert difference.sum() > 0 and difference[near].sum() > 0.99 * difference.sum()
    assert (ad - cn)[near].mean() < 0  # darker: tissue turned to fluid


def test_subjects_are_reproducible_and_vary():
    a = subject(SMALL, "CN", torch.Generator().manual_seed(0))
    b = subject(SMALL, "CN", torch.Generator().manual_seed(0))
    c = subject(SMALL, "CN", torch.Generator().manual_seed(1))
    assert a.shape == (1, *SMALL) and a.dtype == torch.float32 and torch.equal(a, b)
    assert not torch.allclose(a, c) and torch.corrcoef(torch.stack([a.flatten(), c.flatten()]))[0, 1] > 0.9


def test_full_size_subject():
    image = subject(T1_LINEAR_SHAPE, "AD", torch.Generator().manual_seed(0))
    assert image.shape == (1, *T1_LINEAR_SHAPE) and torch.isfinite(image).all()
