"""minunet.data.synth: seeded, EM-like, ISBI label layout."""
import numpy as np
from scipy import ndimage as ndi

from minunet.data import synth


def test_seeded_and_layout():
    raw, labels = synth.synth_stack(2, 96, seed=3)
    again, _ = synth.synth_stack(2, 96, seed=3)
    assert raw.dtype == np.uint8 and labels.dtype == np.uint8 and raw.shape == (2, 96, 96)
    np.testing.assert_array_equal(raw, again)
    assert set(np.unique(labels)) == {0, 1}
    assert 0.5 < labels.mean() < 0.95                        # mostly cells, some membrane
    assert raw[labels == 0].mean() < raw[labels == 1].mean() - 40     # membranes are dark
    n_cells = ndi.label(labels[0], ndi.generate_binary_structure(2, 1))[1]
    assert n_cells > 3
    assert not np.array_equal(synth.synth_stack(1, 96, seed=4)[0], raw[:1])
